//! OTLP over hyper's client connections: OTLP/HTTP is an HTTP/1.1 POST of the protobuf
//! message (`application/x-protobuf`); OTLP/gRPC is an HTTP/2 POST of the message in gRPC's
//! 5-byte frame (`application/grpc`), answered with `grpc-status` in the trailers. One
//! kept-alive connection per signal; a transport error or a timeout drops it and the next
//! request connects again. Plain TCP only (`https://` is refused at start-up).
//!
//! Retryable failures, as the OTLP specification lists them: no connection or no answer,
//! HTTP 429, 502, 503, 504, and gRPC CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
//! ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS.

use std::fmt;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, StatusCode,
    client::conn::{http1, http2},
    header::{CONTENT_TYPE, HOST},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use thiserror::Error;
use tokio::net::TcpStream;

use crate::config::otlp::{Protocol, Target};

/// Why one request failed.
#[derive(Debug, Error)]
pub(crate) enum ExportError {
    /// No connection, or it broke.
    #[error("{0}")]
    Transport(String),
    /// No answer within the target's timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The collector answered with a failure (an HTTP status, or a gRPC status code).
    #[error("the collector answered {what} {code}")]
    Rejected {
        what: &'static str,
        code: u32,
        retryable: bool,
    },
}

impl ExportError {
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Timeout(_) => true,
            Self::Rejected { retryable, .. } => *retryable,
        }
    }

    /// Its `reason` label: `transport`, `timeout`, `rejected`.
    pub(crate) fn reason(&self) -> Reason {
        match self {
            Self::Transport(_) => Reason::Transport,
            Self::Timeout(_) => Reason::Timeout,
            Self::Rejected { .. } => Reason::Rejected,
        }
    }
}

/// Why an export request failed, as a bounded label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Transport,
    Timeout,
    Rejected,
}

impl Reason {
    pub(crate) const ALL: [Self; 3] = [Self::Transport, Self::Timeout, Self::Rejected];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::Rejected => "rejected",
        }
    }
}

/// An Export request, encoded after gRPC's 5-byte frame header (not compressed, then the
/// length, big-endian): OTLP/gRPC sends it all, OTLP/HTTP from the sixth byte, and neither
/// copies the message again.
pub(crate) fn framed(message: &impl prost::Message) -> Bytes {
    let mut buf = frame(message.encoded_len());
    // A Vec grows as needed: encoding into it cannot fail.
    let _ = message.encode(&mut buf);
    Bytes::from(buf)
}

/// gRPC's frame header for a message of `len` bytes, in a buffer with room for the message.
pub(crate) fn frame(len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    buf
}

fn transport(err: impl fmt::Display) -> ExportError {
    ExportError::Transport(err.to_string())
}

enum Connection {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One signal's client.
pub(crate) struct Client {
    target: Target,
    connection: Option<Connection>,
}

impl Client {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            connection: None,
        }
    }

    /// Sends one Export request, [`framed`]; the whole exchange, connecting included, is
    /// bounded by the target's timeout.
    pub(crate) async fn send(&mut self, message: Bytes) -> Result<(), ExportError> {
        let timeout = self.target.timeout;
        match tokio::time::timeout(timeout, self.exchange(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                if !matches!(err, ExportError::Rejected { .. }) {
                    self.connection = None;
                }
                Err(err)
            }
            Err(_) => {
                self.connection = None;
                Err(ExportError::Timeout(timeout))
            }
        }
    }

    async fn connect(&self) -> Result<Connection, ExportError> {
        let stream = TcpStream::connect(&self.target.authority)
            .await
            .map_err(|err| transport(format!("connecting to {}: {err}", self.target.authority)))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        Ok(match self.target.protocol {
            Protocol::HttpProtobuf => {
                let (sender, connection) = http1::handshake(io).await.map_err(transport)?;
                tokio::spawn(connection);
                Connection::Http1(sender)
            }
            Protocol::Grpc => {
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(transport)?;
                tokio::spawn(connection);
                Connection::Http2(sender)
            }
        })
    }

    async fn exchange(&mut self, message: Bytes) -> Result<(), ExportError> {
        let usable = match &self.connection {
            Some(Connection::Http1(sender)) => !sender.is_closed(),
            Some(Connection::Http2(sender)) => !sender.is_closed(),
            None => false,
        };
        if !usable {
            self.connection = Some(self.connect().await?);
        }
        let target = &self.target;
        let Some(connection) = self.connection.as_mut() else {
            return Err(transport("no connection"));
        };
        match connection {
            Connection::Http1(sender) => {
                let mut request = Request::post(target.path.as_str())
                    .header(HOST, target.authority.as_str())
                    .header(CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(message.slice(5..)))
                    .map_err(transport)?;
                request.headers_mut().extend(target.headers.iter().cloned());
                sender.ready().await.map_err(transport)?;
                let response = sender.send_request(request).await.map_err(transport)?;
                let status = response.status();
                // Read the whole answer, so that the connection can take the next request.
                response.into_body().collect().await.map_err(transport)?;
                if status.is_success() {
                    return Ok(());
                }
                Err(ExportError::Rejected {
                    what: "HTTP",
                    code: u32::from(status.as_u16()),
                    retryable: matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS
                            | StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    ),
                })
            }
            Connection::Http2(sender) => {
                let uri = format!("http://{}{}", target.authority, target.path);
                let mut request = Request::post(uri)
                    .header(CONTENT_TYPE, "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(message))
                    .map_err(transport)?;
                request.headers_mut().extend(target.headers.iter().cloned());
                sender.ready().await.map_err(transport)?;
                let response = sender.send_request(request).await.map_err(transport)?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(transport)?;
                // In the trailers, or in the headers of a trailers-only answer.
                let code = body
                    .trailers()
                    .and_then(|trailers| trailers.get("grpc-status"))
                    .or_else(|| parts.headers.get("grpc-status"))
                    .and_then(|value| value.to_str().ok()?.parse::<u32>().ok());
                match (parts.status.is_success(), code) {
                    (true, Some(0)) => Ok(()),
                    (_, Some(code)) => Err(ExportError::Rejected {
                        what: "gRPC status",
                        code,
                        retryable: matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15),
                    }),
                    (_, None) => Err(ExportError::Rejected {
                        what: "HTTP/2",
                        code: u32::from(parts.status.as_u16()),
                        retryable: true,
                    }),
                }
            }
        }
    }
}
