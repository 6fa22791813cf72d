//! The lease pools' part of the status page: PoolStatus of every configured
//! pool (capacity, in use, waiting, holders).

use std::sync::Arc;

use serde_json::{Value, json};

use super::Leases;
use super::service::LeasesService;
use crate::proto::gantry::v1 as pb;
use crate::proto::gantry::v1::leases_server::Leases as _;
use crate::status::{self, Ask, Section, json as pj};

/// The section, over the service and the pools it serves.
pub fn source(service: Arc<LeasesService>, leases: Leases) -> Arc<dyn status::Source> {
    Arc::new(move |_: Ask| -> Section {
        let (service, leases) = (service.clone(), leases.clone());
        Box::pin(async move {
            let mut pools = Vec::new();
            for pool in leases.pool_names() {
                let answer = service
                    .pool_status(status::request(pb::PoolStatusRequest {
                        pool: pool.clone(),
                    }))
                    .await;
                let mut value = pj::answer("gantry.v1.PoolStatusResponse", answer);
                // A failed call still says which pool it was about.
                if let Value::Object(fields) = &mut value {
                    fields.entry("pool").or_insert(json!(pool));
                }
                pools.push(value);
            }
            json!({ "pools": pools })
        })
    })
}
