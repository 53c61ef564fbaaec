//! Placeholder for `health` (skeleton commit).
