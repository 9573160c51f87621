//! shadowgate's hot path in plain Rust: decode score and label messages, pair production with
//! shadow/canary scores, join pairs with late labels, and write the joins' state entries.
//!
//! * [`block`]: decoded events ([`block::ScoreBlock`], [`block::LabelBlock`]) and the pairs of one call
//!   ([`block::Pairs`]);
//! * [`decode`]: score and label messages -> blocks, answering `None` whenever unsure;
//! * [`pairer`]: the event-time join of production with shadow/canary scores (`streams/pairing.py`);
//! * [`joiner`]: the join of pairs with late labels (`streams/labels.py`);
//! * [`jsonfmt`]: orjson's compact JSON, byte for byte (state entries); [`statelog`]: state log records;
//! * [`entry`]: the restore fast path's reading of state entries.
//!
//! This crate knows nothing of Python: it is tested with `cargo test`, and `native/python` (crate
//! `shadowgate-native`, the `streams._native` extension) is the one place that binds it with PyO3.
//!
//! The Python modules are the reference: the joins give their results and byte-identical state entries
//! (checked by the Python suite, which runs the same tests against both). Where the reference's exact
//! acceptance matters and this crate cannot be sure of it, it defers instead of guessing: the decoder
//! answers `None` (the Python decoders take the message), and restore parses only the entries it is sure
//! of ([`pairer::parse_entry`], [`joiner::parse_entry`]); the Python wrapper validates the rest with the
//! reference's own validators and hands the parsed values back ([`pairer::Pairer::restore`],
//! [`joiner::Joiner::restore`]).

pub mod block;
pub mod decode;
pub mod entry;
pub mod error;
pub mod joiner;
pub mod jsonfmt;
pub mod pairer;
pub mod statelog;

pub use error::CoreError;
