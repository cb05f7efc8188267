//! The gateway's own request and response types, shared by the middleware, the front door, the
//! recorder and the composition root: the HTTP types with the gateway body, the request id extension,
//! and the classification of a request into a [`Route`].

mod route;

pub use route::Route;

use http::{Request, Response};

use crate::body::Body;

pub type GatewayRequest = Request<Body>;
pub type GatewayResponse = Response<Body>;

/// The request's id (set by the outermost middleware), available to every inner layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);
