//! Placeholder for `processor_client` (skeleton commit).
