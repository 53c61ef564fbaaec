//! Placeholder for `http` (skeleton commit).
