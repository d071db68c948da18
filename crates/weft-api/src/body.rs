//! Reading request bodies: size limit, content type and JSON decoding that names the field
//! that failed (JSON pointer), so that a bad body gets a 4xx a person can act on.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// Request bodies above this many bytes get 413.
pub const MAX_BODY_BYTES: usize = weft_model::MAX_REQUEST_BYTES;

pub fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

/// Accepts `application/json`, `application/merge-patch+json` and no content type at all.
pub fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let ct = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if ct == "application/json" || ct == "application/merge-patch+json" || ct.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("expected an application/json body, got {ct}"),
        ))
    }
}

/// Parses JSON text into a value; a syntax error is a 400 naming line and column, and a NUL
/// character in any string (which no name, label or description may hold, and PostgreSQL
/// cannot store) a 422 naming where.
pub fn parse_value(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed-json", format!("the body is not valid JSON: {e}"))
    })?;
    // A NUL can only be in a string as the escape `\u0000` (a raw control character is no
    // JSON): without one in the text, nothing needs walking (a batch is megabytes).
    let escaped_nul = body.windows(6).any(|w| w == b"\\u0000");
    if escaped_nul && let Some(pointer) = nul_at(&value, String::new()) {
        return Err(ApiError::invalid(weft_model::ValidationErrors::single(
            &pointer,
            "holds a NUL character (\\u0000), which no value may hold",
        )));
    }
    Ok(value)
}

/// The JSON pointer of the first string (or key) holding a NUL character.
fn nul_at(value: &serde_json::Value, at: String) -> Option<String> {
    let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(at),
        serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_at(v, format!("{at}/{i}"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(format!("{at}/{}", escape(k)))
            } else {
                nul_at(v, format!("{at}/{}", escape(k)))
            }
        }),
        _ => None,
    }
}

/// Decodes a value into `T`; a wrong type, a missing or an unknown field is a 422 naming it.
pub fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let pointer = pointer_of(e.path());
        ApiError::invalid(weft_model::ValidationErrors::single(pointer, e.inner().to_string()))
    })
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => pointer.push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1"))),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    pointer
}

/// Reads a whole JSON body, which must be an object, into `T` (serde would take an array
/// for a struct, field by field: `[]` for a request whose fields all have defaults).
pub fn json<T: DeserializeOwned>(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    check_json_content_type(headers)?;
    let body = bytes(body)?;
    let value = parse_value(&body)?;
    if !value.is_object() {
        return Err(ApiError::invalid(weft_model::ValidationErrors::single("", "the body must be a JSON object")));
    }
    decode(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::SecurityGroup;

    fn problem(value: serde_json::Value) -> crate::problem::Problem {
        decode::<SecurityGroup>(value).unwrap_err().to_problem()
    }

    #[test]
    fn decoding_errors_name_the_field() {
        let p = problem(
            serde_json::json!({"name": "g", "project": "p", "rules": [{"direction": "ingress", "ports": [true]}]}),
        );
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].pointer.as_deref(), Some("/rules/0/ports/0"));
        let p = problem(serde_json::json!({"name": "g", "project": "p", "colour": "red"}));
        assert!(p.detail.contains("colour"), "{}", p.detail);
        let p = problem(serde_json::json!({"name": 5, "project": "p"}));
        assert_eq!(p.errors[0].pointer.as_deref(), Some("/name"));
        let p = problem(serde_json::json!({"project": "p"}));
        assert!(p.detail.contains("missing field `name`"), "{}", p.detail);
    }

    #[test]
    fn syntax_errors_are_400() {
        assert_eq!(parse_value(b"{\"name\": ").unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
