//! Everything that touches the kernel programs: loading and attaching them ([`loader`]), the
//! kernel layout they need ([`btf`], [`tracefs`]), the kernel-side filters ([`filters`]), and
//! reading what they send ([`reader`], [`decode`]). What loading reports, and the errors these
//! modules share, are in [`report`], which imports none of them. How exchanges are folded in
//! the kernel, and read back, is [`folds`].

pub(crate) mod btf;
pub(crate) mod decode;
pub(crate) mod diag;
pub(crate) mod filters;
pub mod folds;
pub mod libcalls;
pub mod loader;
pub(crate) mod misses;
pub(crate) mod opens;
#[cfg(test)]
mod proptests;
pub(crate) mod reader;
pub mod report;
pub(crate) mod seed;
mod tracefs;
