//! A small HTTP/1.1 server on httparse: framing (`parse`), responses (`response`) and
//! the per-connection loop (`conn`). Knows nothing about storage or routes.
pub mod conn;
pub mod parse;
pub mod response;

pub use parse::{
    ParseError, ParseState, Parsed, Request, parse_query, parse_request, parse_request_with, percent_decode,
};
pub use response::Response;
