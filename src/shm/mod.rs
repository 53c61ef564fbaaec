//! Placeholder for the shared-memory core (skeleton commit).
pub mod worker;
