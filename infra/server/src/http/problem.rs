//! The one mapping from every error the API can answer with to an HTTP status and a problem
//! code (RFC 9457 `application/problem+json`).
//! Must not: be bypassed: every handler answers an error through [`Problem`], built here.
//!
//! The table is published in `docs/http.md`; a test below checks every row against this code.

use allot_domain::{Rejection, RejectionCode};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::identity::AuthError;
use crate::service::SubmitError;

/// Every problem code the API answers with: the seed's rejection codes and three of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemCode {
    /// One of the seed's rejection codes (and the administration ones).
    Rejection(RejectionCode),
    /// The actor's role may not perform the action.
    Forbidden,
    /// Too much in flight; retry after `Retry-After`.
    Overloaded,
    /// Nothing was checked or done (shutting down, a dependency cannot answer); retry.
    Unavailable,
}

impl ProblemCode {
    pub const INVALID_REQUEST: ProblemCode = ProblemCode::Rejection(RejectionCode::InvalidRequest);
    pub const NOT_KNOWN: ProblemCode = ProblemCode::Rejection(RejectionCode::NotKnown);
    pub const RECORDING_FAILURE: ProblemCode =
        ProblemCode::Rejection(RejectionCode::RecordingFailure);

    /// The code as it appears in a problem's `code` member and its `type` URN.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::Rejection(code) => code.as_str(),
            ProblemCode::Forbidden => "forbidden",
            ProblemCode::Overloaded => "overloaded",
            ProblemCode::Unavailable => "unavailable",
        }
    }

    /// Every code, for the documentation and its test.
    pub fn all() -> impl Iterator<Item = ProblemCode> {
        RejectionCode::ALL
            .into_iter()
            .map(ProblemCode::Rejection)
            .chain([
                ProblemCode::Forbidden,
                ProblemCode::Overloaded,
                ProblemCode::Unavailable,
            ])
    }
}

impl Serialize for ProblemCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The HTTP status of each rejection code.
pub fn status_for(code: RejectionCode) -> StatusCode {
    match code {
        RejectionCode::InvalidRequest => StatusCode::BAD_REQUEST,
        RejectionCode::TokenCollision => StatusCode::UNPROCESSABLE_ENTITY,
        RejectionCode::NotKnown => StatusCode::NOT_FOUND,
        RejectionCode::PoolClosed
        | RejectionCode::PoolCapacityExceeded
        | RejectionCode::ResourceUnavailable
        | RejectionCode::NotHeld
        | RejectionCode::WindowElapsed
        | RejectionCode::WindowNotElapsed
        | RejectionCode::PoolAlreadyDeclared
        | RejectionCode::CapacityBelowAllocated => StatusCode::CONFLICT,
        RejectionCode::RecordingFailure => StatusCode::SERVICE_UNAVAILABLE,
        RejectionCode::NotOwner => StatusCode::FORBIDDEN,
    }
}

/// An RFC 9457 problem whose `code` is a [`ProblemCode`].
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: ProblemCode,
    /// A rejection recorded now as an event carries the event's receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Box<allot_client::receipt::Receipt>>,
    #[serde(skip)]
    pub replayed: bool,
}

impl Problem {
    pub fn new(status: StatusCode, code: ProblemCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:allot:problem:{}", code.as_str()),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            receipt: None,
            replayed: false,
        }
    }

    /// A malformed request: 400 `invalid-request`.
    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            ProblemCode::INVALID_REQUEST,
            detail,
        )
    }

    /// Something that does not exist (or that the caller may not know exists): 404 `not-known`.
    pub fn not_known(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, ProblemCode::NOT_KNOWN, detail)
    }

    /// Too much in flight: 503 `overloaded`.
    pub fn overloaded(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::Overloaded,
            detail,
        )
    }

    /// Nothing was checked or done: 503 `unavailable`.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::Unavailable,
            detail,
        )
    }

    /// A request body announced larger than the limit: 413 `invalid-request`.
    pub fn too_large(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::INVALID_REQUEST,
            detail,
        )
    }

    /// A method the route does not have: 405 `invalid-request`.
    pub fn method_not_allowed(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ProblemCode::INVALID_REQUEST,
            detail,
        )
    }
}

impl From<&Rejection> for Problem {
    fn from(rejection: &Rejection) -> Problem {
        Problem::new(
            status_for(rejection.code()),
            ProblemCode::Rejection(rejection.code()),
            rejection.to_string(),
        )
    }
}

impl From<&AuthError> for Problem {
    fn from(error: &AuthError) -> Problem {
        match error {
            AuthError::Forbidden { .. } => Problem::new(
                StatusCode::FORBIDDEN,
                ProblemCode::Forbidden,
                error.to_string(),
            ),
            // Nothing was checked: the client may retry, the credential is not at fault.
            AuthError::Unavailable(_) => Problem::unavailable(error.to_string()),
            // The seed maps an invalid credential to invalid-request; 401 says it is the
            // credential.
            _ => Problem::new(
                StatusCode::UNAUTHORIZED,
                ProblemCode::INVALID_REQUEST,
                error.to_string(),
            ),
        }
    }
}

impl From<&SubmitError> for Problem {
    fn from(error: &SubmitError) -> Problem {
        match error {
            SubmitError::Rejected(rejection) => Problem::from(rejection),
            SubmitError::Recording(failure) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemCode::RECORDING_FAILURE,
                failure.to_string(),
            ),
            SubmitError::Overloaded(_) => Problem::overloaded(error.to_string()),
            SubmitError::ShuttingDown => Problem::unavailable(error.to_string()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let replayed = self.replayed;
        let mut response = (status, Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if replayed {
            response
                .headers_mut()
                .insert(super::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{BODY_BYTES_MAX, IN_FLIGHT_MAX, edge};
    use crate::service::SHARD_QUEUE_MAX;
    use allot_domain::command::{
        COUNT_MAX, HOLD_DURATION_MS_MAX, HOLD_DURATION_MS_MIN, IDEMPOTENCY_WINDOW_MS_DEFAULT,
        IDEMPOTENCY_WINDOW_MS_MAX, IDEMPOTENCY_WINDOW_MS_MIN, TOKEN_BYTES_MAX,
    };
    use allot_domain::signing::SIGNED_AT_SKEW_MS;

    fn doc() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/http.md");
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// A number as the docs write it: thousands separated by commas.
    fn written(number: u64) -> String {
        let digits = number.to_string();
        let mut out = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(digit);
        }
        out
    }

    fn row<'a>(doc: &'a str, starts: &str) -> &'a str {
        doc.lines()
            .find(|line| line.starts_with(starts))
            .unwrap_or_else(|| panic!("docs/http.md has no row starting {starts:?}"))
    }

    #[test]
    fn the_documented_problem_table_is_the_mapping() {
        let doc = doc();
        for code in RejectionCode::ALL {
            let line = row(&doc, &format!("| rejection `{}`", code.as_str()));
            let expected = format!("| {} | `{}` |", status_for(code).as_u16(), code.as_str());
            assert!(line.ends_with(&expected), "{line} should end {expected}");
        }
        for code in ProblemCode::all() {
            assert!(
                doc.contains(&format!("| `{}` |", code.as_str())),
                "{}",
                code.as_str()
            );
        }
        let forbidden = Problem::from(&AuthError::Forbidden {
            role: allot_domain::Role::Client,
            action: "close_pool".to_owned(),
        });
        assert!(row(&doc, "| a role that may not").ends_with(&format!(
            "| {} | `{}` |",
            forbidden.status,
            forbidden.code.as_str()
        )));
        let bad = Problem::from(&AuthError::BadSignature("someone".to_owned()));
        assert!(
            row(&doc, "| a credential that does not verify").ends_with(&format!(
                "| {} | `{}` |",
                bad.status,
                bad.code.as_str()
            ))
        );
        let overloaded = Problem::from(&SubmitError::Overloaded(allot_domain::PoolId::new("p")));
        assert!(
            row(&doc, "| too many requests in flight").ends_with(&format!(
                "| {} | `{}` |",
                overloaded.status,
                overloaded.code.as_str()
            ))
        );
        let unavailable = Problem::from(&SubmitError::ShuttingDown);
        assert!(row(&doc, "| shutting down").ends_with(&format!(
            "| {} | `{}` |",
            unavailable.status,
            unavailable.code.as_str()
        )));
        let too_large = Problem::too_large("x");
        assert!(
            row(&doc, "| a body longer than the limit").ends_with(&format!(
                "| {} | `{}` |",
                too_large.status,
                too_large.code.as_str()
            ))
        );
        let method = Problem::method_not_allowed("x");
        assert!(row(&doc, "| a method the route").ends_with(&format!(
            "| {} | `{}` |",
            method.status,
            method.code.as_str()
        )));
    }

    #[test]
    fn the_documented_limits_are_the_constants() {
        let doc = doc();
        let cases: [(&str, Vec<u64>); 18] = [
            ("| request body", vec![BODY_BYTES_MAX as u64]),
            (
                "| batch body",
                vec![super::super::BATCH_BODY_BYTES_MAX as u64],
            ),
            (
                "| commands of one batch",
                vec![allot_domain::batch::BATCH_COMMANDS_MAX as u64],
            ),
            ("| commands decided at once", vec![IN_FLIGHT_MAX as u64]),
            ("| commands queued per shard", vec![SHARD_QUEUE_MAX as u64]),
            ("| `Allot-Signed-At`", vec![SIGNED_AT_SKEW_MS]),
            ("| idempotency token", vec![TOKEN_BYTES_MAX as u64]),
            (
                "| `idempotency_window_ms`",
                vec![
                    IDEMPOTENCY_WINDOW_MS_MIN,
                    IDEMPOTENCY_WINDOW_MS_MAX,
                    IDEMPOTENCY_WINDOW_MS_DEFAULT,
                ],
            ),
            (
                "| `duration_ms`",
                vec![HOLD_DURATION_MS_MIN, HOLD_DURATION_MS_MAX],
            ),
            ("| `count`", vec![u64::from(COUNT_MAX)]),
            ("| capacity", vec![allot_domain::command::CAPACITY_MAX]),
            ("| open connections", vec![edge::CONNECTIONS_MAX as u64]),
            (
                "| request head (request line and headers)",
                vec![
                    edge::HEAD_BYTES_MAX as u64,
                    edge::HEADERS_MAX as u64,
                    edge::HEAD_BYTES_LIMIT as u64,
                ],
            ),
            ("| request head arriving whole", vec![edge::HEAD_TIMEOUT_MS]),
            ("| request body arriving whole", vec![edge::BODY_TIMEOUT_MS]),
            (
                "| keep-alive connection waiting",
                vec![edge::IDLE_TIMEOUT_MS],
            ),
            (
                "| an answer waiting for the client",
                vec![edge::SEND_TIMEOUT_MS],
            ),
            (
                "| request body, from `Content-Length`",
                vec![
                    BODY_BYTES_MAX as u64,
                    super::super::BATCH_BODY_BYTES_MAX as u64,
                ],
            ),
        ];
        for (starts, numbers) in cases {
            let line = row(&doc, starts);
            for number in numbers {
                assert!(
                    line.contains(&written(number)),
                    "{line} lacks {}",
                    written(number)
                );
            }
        }
    }
}
