//! The subcommands of the `cim` binary that do more than print: each takes its parsed
//! arguments and returns what it did, or a one-line error for the binary to print.

pub mod bench_infer;
pub mod eval;
pub mod export;
pub mod infer;
pub mod plot;
pub mod pretrain;
pub mod roundtrip;
pub mod tokenizer;
pub mod visualize;
