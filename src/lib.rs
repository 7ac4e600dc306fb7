//! taoflow: transfer-learning pipelines as content-hashed DAGs.
//!
//! The flow of one `taoflow run` (see `README.md`): [`config`] reads the TOML into a
//! validated [`config::Pipeline`], [`graph`] resolves references into a DAG, and
//! [`engine`] walks it: per stage a [`fingerprint::Fingerprint`] gives the key, the
//! [`store`] serves hits and records new results, and the lock file remembers them.

pub mod cli;
pub mod commands;
pub mod config;
pub mod cuda;
pub mod data;
pub mod diag;
pub mod engine;
pub mod entry;
pub mod fingerprint;
pub mod git;
pub mod gpu;
pub mod graph;
pub mod hash;
pub mod infer;
pub mod lockfile;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod report;
pub mod results;
pub mod runtime;
pub mod schema;
pub mod stages;
pub mod store;
pub mod sweep;
pub mod tasks;
pub mod ui;
pub mod value;
