//! Helpers every layer uses and that use nothing else of jobhost: [`files`] reads the files
//! jobhost reads whole without trusting what is at the path (FIFOs, devices, huge files) and
//! writes the ones it owns atomically; [`text`] shows untrusted text safely and formats times,
//! durations and error chains the same way everywhere.

pub mod files;
pub mod text;
