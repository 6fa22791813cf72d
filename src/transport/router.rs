//! Routes a call to its gRPC service by the service name in the path
//! (`/gantry.v1.RateLimiter/Acquire` → `gantry.v1.RateLimiter`); each
//! generated service then matches its own methods. One hash lookup per call,
//! instead of tonic's `Routes`, whose axum router also extracts URL parameters
//! into the request — allocations per call that a gRPC path never uses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::{self, Either};
use http::{Request, Response};
use tonic::body::Body;
use tower::Service;

use crate::routes::{BoxedService, GrpcService};

#[derive(Clone, Default)]
pub struct Router {
    services: HashMap<&'static str, BoxedService, foldhash::fast::RandomState>,
}

impl Router {
    /// Routes to `services` by name (tonic's servers are always ready, so a
    /// call goes straight to `call`).
    pub fn new(services: &[GrpcService]) -> Self {
        Self {
            services: services
                .iter()
                .map(|s| (s.name, s.service.clone()))
                .collect(),
        }
    }
}

/// The service name in a gRPC path.
fn service_name(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').map_or(path, |(service, _)| service)
}

impl Service<Request<Body>> for Router {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<
        <BoxedService as Service<Request<Body>>>::Future,
        future::Ready<Result<Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.services.get_mut(service_name(request.uri().path())) {
            Some(service) => Either::Left(service.call(request)),
            None => {
                let status = tonic::Status::unimplemented(format!(
                    "unknown service in {}",
                    request.uri().path()
                ));
                Either::Right(future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_first_path_segment() {
        assert_eq!(service_name("/gantry.v1.Cache/Get"), "gantry.v1.Cache");
        assert_eq!(
            service_name("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health"
        );
        assert_eq!(service_name("/nothing"), "nothing");
        assert_eq!(service_name(""), "");
    }
}
