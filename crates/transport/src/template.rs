//! Path templates of `google.api.http` rules (google/api/http.proto):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;  Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;  Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `**` may only end a template. A variable without a pattern stands for one segment (`*`).

use percent_encoding::percent_decode_str;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path (one or more segments).
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Variable {
    field_path: Vec<String>,
    start: usize,
    end: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

/// A request path cut into raw (still percent-encoded) segments and its verb.
pub struct RequestPath<'a> {
    segments: Vec<&'a str>,
    verb: Option<&'a str>,
}

impl<'a> RequestPath<'a> {
    /// `path` must start with `/`. The verb is whatever follows the last `:` of the last segment.
    pub fn parse(path: &'a str) -> Option<RequestPath<'a>> {
        let rest = path.strip_prefix('/')?;
        let mut segments: Vec<&str> = rest.split('/').collect();
        let mut verb = None;
        if let Some(last) = segments.last_mut()
            && let Some((before, v)) = last.rsplit_once(':')
        {
            *last = before;
            verb = Some(v);
        }
        Some(RequestPath { segments, verb })
    }
}

/// Variable bindings of a match: field path and decoded value.
pub type Bindings = Vec<(Vec<String>, String)>;

impl Template {
    pub fn parse(template: &str) -> Result<Template, TemplateError> {
        let err = |reason| TemplateError {
            template: template.to_string(),
            reason,
        };
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| err("must start with /"))?;
        // The verb follows the last ':' outside braces.
        let mut depth = 0i32;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        let (path, verb) = match verb_at {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_string())),
            None => (rest, None),
        };
        if verb
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains('/'))
        {
            return Err(err("bad verb"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| err("unclosed variable"))?;
                let body = &inner[..close];
                let (field, pattern) = match body.split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (body, "*"),
                };
                let field_path: Vec<String> = field.split('.').map(str::to_string).collect();
                if field_path.iter().any(|p| p.is_empty()) {
                    return Err(err("empty field path"));
                }
                let start = segments.len();
                for seg in pattern.split('/') {
                    segments
                        .push(parse_segment(seg).ok_or_else(|| err("bad segment in variable"))?);
                }
                variables.push(Variable {
                    field_path,
                    start,
                    end: segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let seg = &chars[..end];
                if seg.contains('{') || seg.contains('}') {
                    return Err(err("variable must be a whole segment"));
                }
                segments.push(parse_segment(seg).ok_or_else(|| err("bad segment"))?);
                chars = &chars[end..];
            }
            if let Some(next) = chars.strip_prefix('/') {
                chars = next;
                if chars.is_empty() {
                    return Err(err("trailing /"));
                }
            } else if !chars.is_empty() {
                return Err(err("expected /"));
            }
        }
        if segments.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
            return Err(err("** must be the last segment"));
        }
        Ok(Template {
            segments,
            variables,
            verb,
        })
    }

    /// How specific the template is: literal segments count most. Used to prefer the best of several matches.
    pub fn specificity(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
            * 2
            + usize::from(self.verb.is_some())
    }

    /// Matches a request path; returns the variable bindings, percent-decoded (multi-segment variables keep
    /// `%2F` encoded, as http.proto prescribes).
    pub fn matches(&self, path: &RequestPath<'_>) -> Option<Bindings> {
        if self.verb.as_deref() != path.verb {
            return None;
        }
        let n = path.segments.len();
        let rest_at = self.segments.iter().position(|s| *s == Segment::Rest);
        match rest_at {
            Some(i) if n <= i => return None,
            None if n != self.segments.len() => return None,
            _ => {}
        }
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(l) => {
                    if path.segments[i] != l {
                        return None;
                    }
                }
                Segment::One => {
                    if path.segments[i].is_empty() {
                        return None;
                    }
                }
                Segment::Rest => {}
            }
        }
        let mut bindings = Vec::with_capacity(self.variables.len());
        for var in &self.variables {
            let multi = var.end - var.start > 1
                || self.segments[var.start..var.end].contains(&Segment::Rest);
            let end = if self.segments[var.start..var.end].contains(&Segment::Rest) {
                n
            } else {
                var.end
            };
            let raw = &path.segments[var.start..end];
            let value = if multi {
                raw.iter()
                    .map(|s| decode_keeping_slash(s))
                    .collect::<Option<Vec<_>>>()?
                    .join("/")
            } else {
                percent_decode_str(raw.first()?)
                    .decode_utf8()
                    .ok()?
                    .into_owned()
            };
            bindings.push((var.field_path.clone(), value));
        }
        Some(bindings)
    }
}

fn parse_segment(seg: &str) -> Option<Segment> {
    match seg {
        "" => None,
        "*" => Some(Segment::One),
        "**" => Some(Segment::Rest),
        lit if lit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~%".contains(c)) =>
        {
            Some(Segment::Literal(lit.to_string()))
        }
        _ => None,
    }
}

fn decode_keeping_slash(seg: &str) -> Option<String> {
    let mut out = String::new();
    for (i, part) in seg.split("%2F").enumerate() {
        for (j, p) in part.split("%2f").enumerate() {
            if i > 0 && j == 0 {
                out.push_str("%2F");
            } else if j > 0 {
                out.push_str("%2f");
            }
            out.push_str(&percent_decode_str(p).decode_utf8().ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, p: &str) -> Option<Bindings> {
        Template::parse(t)
            .unwrap()
            .matches(&RequestPath::parse(p).unwrap())
    }

    fn b(pairs: &[(&str, &str)]) -> Bindings {
        pairs
            .iter()
            .map(|(f, v)| (f.split('.').map(str::to_string).collect(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_and_verbs() {
        let t = "/v1/{parent=projects/*/locations/*/clusters/*}:generateClientCertificate";
        assert_eq!(
            m(
                t,
                "/v1/projects/p/locations/l/clusters/c1:generateClientCertificate"
            ),
            Some(b(&[("parent", "projects/p/locations/l/clusters/c1")]))
        );
        assert_eq!(m(t, "/v1/projects/p/locations/l/clusters/c1"), None);
        assert_eq!(m(t, "/v1/projects/p/locations/l/clusters/c1:other"), None);
        let get = "/v1/{name=projects/*/locations/*/clusters/*}";
        assert_eq!(
            m(
                get,
                "/v1/projects/p/locations/l/clusters/c1:generateClientCertificate"
            ),
            None
        );
        assert_eq!(
            m(get, "/v1/projects/p/locations/l/clusters/c1"),
            Some(b(&[("name", "projects/p/locations/l/clusters/c1")]))
        );
        assert_eq!(m(get, "/v1/projects/p/locations/l/clusters"), None);
        assert_eq!(m(get, "/v1/projects/p/locations/l/clusters/c1/x"), None);
        assert_eq!(m(get, "/v1/projects//locations/l/clusters/c1"), None);
        assert_eq!(
            m(
                "/v1/{parent=projects/*/locations/*}/clusters",
                "/v1/projects/p/locations/l/clusters"
            ),
            Some(b(&[("parent", "projects/p/locations/l")]))
        );
    }

    #[test]
    fn simple_nested_and_rest_variables() {
        assert_eq!(
            m("/v1/{a.b}/x", "/v1/hello%20world/x"),
            Some(b(&[("a.b", "hello world")]))
        );
        assert_eq!(
            m("/v1/{a}/x", "/v1/a%2Fb/x"),
            Some(b(&[("a", "a/b")])),
            "single segment decodes fully"
        );
        assert_eq!(
            m("/v1/{name=operations/**}", "/v1/operations/a/b%2Fc%20d"),
            Some(b(&[("name", "operations/a/b%2Fc d")])),
            "multi-segment keeps %2F"
        );
        assert_eq!(m("/v1/{name=operations/**}", "/v1/operations"), None);
        assert_eq!(m("/v1/*/x", "/v1/anything/x"), Some(vec![]));
    }

    #[test]
    fn bad_templates_are_refused() {
        for t in [
            "v1/x", "/v1/{a", "/v1/**/x", "/v1/x/", "/v1/x{a}", "/v1/{=x}", "/v1/x:",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn specificity_prefers_literals() {
        let a = Template::parse("/v1/{name=projects/*/locations/*/operations/*}").unwrap();
        let b = Template::parse("/v1/{name=projects/*/*/*/*/*}").unwrap();
        assert!(a.specificity() > b.specificity());
    }
}
