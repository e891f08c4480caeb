//! Responses and their wire form.
use serde_json::Value;

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra headers (Content-Length, Content-Type and Connection are added on write).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// Held on the node's budget of unwritten answers until this is dropped (written,
    /// or its connection gone): `crate::budget`.
    pub hold: Option<crate::budget::Hold>,
    /// The connection is handed over instead (a stream): nothing of this response is
    /// written by the connection loop.
    pub takeover: Option<Takeover>,
}

/// What takes a connection over after its request (`Response::take_over`).
type TakeoverFn = Box<dyn FnOnce(glommio::net::TcpStream, Vec<u8>) -> LocalFuture>;
type LocalFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// A connection hand-over: gets the socket and the bytes the client sent after the
/// request (already read), and owns the connection from then on.
pub struct Takeover(TakeoverFn);

impl Takeover {
    pub async fn run(self, stream: glommio::net::TcpStream, read_ahead: Vec<u8>) {
        (self.0)(stream, read_ahead).await
    }
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Takeover")
    }
}

/// Two hand-overs are never the same one.
impl PartialEq for Takeover {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl Eq for Takeover {}

impl Response {
    pub fn json(status: u16, body: &Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            hold: None,
            takeover: None,
        }
    }

    /// A JSON body that is already serialized.
    pub fn raw_json(status: u16, body: Vec<u8>) -> Response {
        Response { status, headers: Vec::new(), body, content_type: "application/json", hold: None, takeover: None }
    }

    /// A body of another type (e.g. Prometheus text).
    pub fn text(status: u16, body: String, content_type: &'static str) -> Response {
        Response { status, headers: Vec::new(), body: body.into_bytes(), content_type, hold: None, takeover: None }
    }

    pub fn empty(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new(), content_type: "", hold: None, takeover: None }
    }

    /// The error shape of docs/api.md.
    pub fn error(status: u16, code: &str, message: impl std::fmt::Display) -> Response {
        Response::json(status, &serde_json::json!({"error": code, "message": message.to_string()}))
    }

    /// A response that hands the connection to `f` (see `Takeover`).
    pub fn take_over<F, Fut>(f: F) -> Response
    where
        F: FnOnce(glommio::net::TcpStream, Vec<u8>) -> Fut + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let takeover = Takeover(Box::new(move |stream, read_ahead| Box::pin(f(stream, read_ahead))));
        Response { takeover: Some(takeover), ..Response::empty(101) }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Appends the response to `out`. `head_only` for HEAD (the length of the body that
    /// GET would send is still announced).
    pub fn write_to(&self, out: &mut Vec<u8>, head_only: bool, close: bool) {
        self.write_head_to(out, close);
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }

    /// Appends the status line and headers (through the blank line) to `out`.
    pub fn write_head_to(&self, out: &mut Vec<u8>, close: bool) {
        use std::io::Write;
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if !self.content_type.is_empty() {
            let _ = write!(out, "Content-Type: {}\r\n", self.content_type);
        }
        let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(if close { b"Connection: close\r\n\r\n" } else { b"Connection: keep-alive\r\n\r\n" });
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        101 => "Switching Protocols",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
