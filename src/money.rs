//! Placeholder for `money` (skeleton commit).
