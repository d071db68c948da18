//! Field-level validation errors that carry the JSON pointer of the offending field, so that the
//! API can tell a client exactly what to fix (RFC 9457 `invalid-params`-style).

use std::fmt;

/// One invalid field: where it is (a JSON pointer into the request body) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) of the field, e.g. `/rules/0/ports/1`.
    pub pointer: String,
    /// What is wrong with it, for a person.
    pub detail: String,
}

/// Every problem found in one object; validation does not stop at the first.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.errors {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{}: {}", if e.pointer.is_empty() { "/" } else { &e.pointer }, e.detail)?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn single(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { errors: vec![FieldError { pointer: pointer.into(), detail: detail.into() }] }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// Collects errors while walking an object, keeping track of the current JSON pointer.
#[derive(Debug, Default)]
pub struct Validator {
    path: Vec<String>,
    errors: ValidationErrors,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with `segment` appended to the current pointer.
    pub fn at<S: ToString>(&mut self, segment: S, f: impl FnOnce(&mut Self)) {
        self.path.push(escape(&segment.to_string()));
        f(self);
        self.path.pop();
    }

    /// Records an error at the current pointer.
    pub fn error(&mut self, detail: impl Into<String>) {
        let pointer = self.pointer();
        self.errors.errors.push(FieldError { pointer, detail: detail.into() });
    }

    /// Records `result`'s error, if any, at `segment` below the current pointer.
    pub fn check<S: ToString>(&mut self, segment: S, result: Result<(), String>) {
        if let Err(detail) = result {
            self.at(segment, |v| v.error(detail));
        }
    }

    pub fn pointer(&self) -> String {
        self.path.iter().map(|s| format!("/{s}")).collect()
    }

    pub fn finish(self) -> Result<(), ValidationErrors> {
        self.errors.into_result()
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_nest_and_escape() {
        let mut v = Validator::new();
        v.at("labels", |v| v.at("example.com/app", |v| v.error("bad")));
        v.at("rules", |v| v.at(3, |v| v.check("ports", Err("out of range".into()))));
        let errors = v.finish().unwrap_err().errors;
        assert_eq!(errors[0].pointer, "/labels/example.com~1app");
        assert_eq!(errors[1].pointer, "/rules/3/ports");
    }
}
