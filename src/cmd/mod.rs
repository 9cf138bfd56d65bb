//! One file per subcommand: each wires library stages together and returns
//! the exit status it wants.

pub mod bundle;
pub mod images;
pub mod internal;
pub mod pods;
pub mod podrun;
pub mod provision;
pub mod pull;
pub mod run;
