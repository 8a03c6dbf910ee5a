//! The batcher's transport: keep-alive HTTP/1.1 connections to one server on hyper's
//! connection-level client. A connection is taken from the idle stack for one exchange and put
//! back once its answer has been read whole; one that failed is dropped (its task ends with it).

use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};

/// Why an exchange got no answer. Every variant may have reached the server or not.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("an answer longer than {0} bytes")]
    TooLong(usize),
}

/// Longest answer read: a batch of the server's most commands, each with a receipt, fits
/// several times over; anything longer is not an answer of the API.
pub const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Where the server is: `http://host[:port][/prefix]`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    host_header: HeaderValue,
    /// The path prefix the API's paths are appended to (empty, or `/prefix` without a slash at
    /// the end).
    prefix: String,
}

impl Endpoint {
    /// Parses `base`; `None` unless it is a plain `http://` URL with a host.
    pub fn parse(base: &str) -> Option<Endpoint> {
        let uri: hyper::Uri = base.parse().ok()?;
        if uri.scheme_str() != Some("http") || uri.query().is_some() {
            return None;
        }
        let authority = uri.authority()?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Some(Endpoint {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            host_header: HeaderValue::from_str(authority.as_str()).ok()?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `path` under this endpoint's prefix, as a request target.
    pub fn target(&self, path: &str) -> Option<hyper::Uri> {
        format!("{}{path}", self.prefix).parse().ok()
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// The connections to one endpoint: at most as many as exchanges run at once.
pub struct Connections {
    endpoint: Endpoint,
    idle: Mutex<Vec<Sender>>,
}

/// An answer read whole.
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl Connections {
    pub fn new(endpoint: Endpoint) -> Connections {
        Connections {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// POSTs `body` (JSON) to `target` with `headers`, within `timeout` (connecting included).
    pub async fn post(
        &self,
        target: hyper::Uri,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        match tokio::time::timeout(timeout, self.exchange(target, headers, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    async fn exchange(
        &self,
        target: hyper::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, TransportError> {
        let mut sender = match self.take_idle() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let mut request = hyper::Request::new(Full::new(body));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = target;
        *request.headers_mut() = headers;
        let request_headers = request.headers_mut();
        request_headers.insert(HOST, self.endpoint.host_header.clone());
        request_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|error| match error.downcast::<hyper::Error>() {
                Ok(error) => TransportError::Http(*error),
                Err(_) => TransportError::TooLong(ANSWER_BYTES_MAX),
            })?
            .to_bytes();
        // Read whole: the connection can carry the next request.
        self.put_idle(sender);
        Ok(Response { status, body })
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: Sender) {
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(sender);
        }
    }

    async fn connect(&self) -> Result<Sender, TransportError> {
        let addr = self.endpoint.addr();
        let connect_error = |source| TransportError::Connect {
            addr: addr.clone(),
            source,
        };
        let stream =
            tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                .await
                .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // A connection that ends (closed by the server, reset) is simply not reused.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_with_a_host() {
        let endpoint = Endpoint::parse("http://127.0.0.1:7878/").expect("parses");
        assert_eq!(endpoint.addr(), "127.0.0.1:7878");
        assert_eq!(
            endpoint.target("/v1/batches").expect("target").to_string(),
            "/v1/batches"
        );
        let prefixed = Endpoint::parse("http://allot.example/api/").expect("parses");
        assert_eq!(prefixed.addr(), "allot.example:80");
        assert_eq!(
            prefixed.target("/v1/batches").expect("target").to_string(),
            "/api/v1/batches"
        );
        assert!(Endpoint::parse("https://allot.example").is_none());
        assert!(Endpoint::parse("allot.example:7878").is_none());
    }
}
