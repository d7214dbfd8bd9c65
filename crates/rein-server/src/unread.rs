//! Connections a request body was left unread on. A handler that answers without reading the
//! body to its end (a 413 for a body over the limit, a 401 before a large upload was read)
//! leaves the rest of it in the connection, so the server closes the connection after the
//! answer. The answer must say so (`Connection: close`): a client that pools the connection
//! otherwise sends its next request into one the server is closing, and that request fails with
//! no answer at all.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Response};
use http_body::{Frame, SizeHint};

/// A request body that notes when it has been read to its end.
struct Watched {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request's body was read to its end, once its handler has answered.
pub(crate) struct Unread(Option<Arc<AtomicBool>>);

/// Watches `request`'s body; a request with no body (or an empty one) needs no watching.
pub(crate) fn watch(request: Request) -> (Request, Unread) {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return (request, Unread(None));
    }
    let ended = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| {
        Body::new(Watched {
            inner,
            ended: ended.clone(),
        })
    });
    (request, Unread(Some(ended)))
}

impl Unread {
    /// Marks `response` as closing its connection if the body was left unread. An answer that
    /// streams (an event stream, a gateway's streamed reply) may be sent before a body it reads
    /// is at its end, so only answers that refuse the request are marked.
    pub(crate) fn mark<B>(&self, response: &mut Response<B>) {
        let unread = self
            .0
            .as_ref()
            .is_some_and(|ended| !ended.load(Ordering::Relaxed));
        if unread && (response.status().is_client_error() || response.status().is_server_error()) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}
