//! End-to-end tests over real gRPC on 127.0.0.1:0, in one test binary to keep
//! link time low. Each module covers one area.

mod abuse;
mod backends;
mod cache;
mod cache_process;
mod certs;
mod clients;
mod cluster;
mod common;
mod disk_full;
mod docs;
mod foundation;
mod fuzz;
mod helm;
mod hostile_input;
mod leases;
mod leases_process;
mod monitoring;
mod process;
mod query;
mod ratelimit;
mod ratelimit_process;
mod security;
mod status_page;
mod traces;
mod transport;
