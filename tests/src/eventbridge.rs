//! A test-only EventBridge event-pattern matcher, and a reader for the small
//! YAML subset that `infra/template.yaml` writes its `EventPattern`s in.
//!
//! Semantics implemented, as documented in "Content filtering in Amazon
//! EventBridge event patterns"
//! (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-event-patterns-content-based-filtering.html>)
//! and "Comparison operators for use in event patterns"
//! (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html>):
//!
//! - every field named in the pattern must match (AND); a field missing from
//!   the event matches nothing but `exists: false`;
//! - a leaf's array lists alternatives (OR): exact values (strings, numbers,
//!   booleans, null), `prefix`, `suffix`, `equals-ignore-case`,
//!   `anything-but` (a value, a list, or `{prefix}` / `{suffix}`), `exists`,
//!   `numeric` ranges;
//! - a value in the event that is an array matches when any element does;
//! - `$or` holds sub-patterns of which at least one must match.
//!
//! An operator it does not know panics, so a test never passes by ignoring
//! part of a pattern.

use serde_json::{Map, Value};

/// Whether `event` matches the EventBridge `pattern`.
pub fn matches(pattern: &Value, event: &Value) -> bool {
    let pattern = pattern
        .as_object()
        .unwrap_or_else(|| panic!("an event pattern is a JSON object, not {pattern}"));
    object_matches(pattern, Some(event))
}

fn object_matches(pattern: &Map<String, Value>, event: Option<&Value>) -> bool {
    pattern.iter().all(|(key, sub)| {
        if key == "$or" {
            let alternatives = sub
                .as_array()
                .unwrap_or_else(|| panic!("$or takes an array of patterns, not {sub}"));
            return alternatives.iter().any(|alt| {
                let alt = alt
                    .as_object()
                    .unwrap_or_else(|| panic!("$or alternatives are objects, not {alt}"));
                object_matches(alt, event)
            });
        }
        let field = event.and_then(|e| e.get(key));
        match sub {
            Value::Object(nested) => match field {
                // An array of objects: some element carries the nested fields.
                Some(Value::Array(items)) => {
                    items.iter().any(|item| object_matches(nested, Some(item)))
                }
                other => object_matches(nested, other),
            },
            Value::Array(conditions) => leaf_matches(conditions, field),
            other => panic!("pattern field {key:?} must be an array or an object, not {other}"),
        }
    })
}

fn leaf_matches(conditions: &[Value], field: Option<&Value>) -> bool {
    let values: Vec<&Value> = match field {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
    };
    let present = matches!(field, Some(v) if !v.is_object());
    conditions.iter().any(|condition| match condition {
        Value::Object(op) if op.contains_key("exists") => {
            let want = op["exists"]
                .as_bool()
                .unwrap_or_else(|| panic!("exists takes true or false, not {}", op["exists"]));
            present == want
        }
        _ => values.iter().any(|v| value_matches(condition, v)),
    })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

fn string_op(arg: &Value, v: &Value, op: fn(&str, &str) -> bool) -> bool {
    let Some(v) = v.as_str() else { return false };
    match arg {
        Value::String(s) => op(v, s),
        Value::Object(o) if o.contains_key("equals-ignore-case") => {
            let s = o["equals-ignore-case"].as_str().unwrap_or_default();
            op(&v.to_lowercase(), &s.to_lowercase())
        }
        other => panic!("unsupported string operand {other}"),
    }
}

fn value_matches(condition: &Value, v: &Value) -> bool {
    let Value::Object(op) = condition else {
        return same(condition, v);
    };
    let (name, arg) = op
        .iter()
        .next()
        .unwrap_or_else(|| panic!("empty operator object in a pattern"));
    assert_eq!(op.len(), 1, "one operator per object: {condition}");
    match name.as_str() {
        "prefix" => string_op(arg, v, |v, p| v.starts_with(p)),
        "suffix" => string_op(arg, v, |v, s| v.ends_with(s)),
        "equals-ignore-case" => string_op(&Value::Object(op.clone()), v, |v, s| v == s),
        "anything-but" => match arg {
            Value::Array(list) => !list.iter().any(|x| same(x, v)),
            Value::Object(inner) if inner.contains_key("prefix") => {
                v.is_string() && !string_op(&inner["prefix"], v, |v, p| v.starts_with(p))
            }
            Value::Object(inner) if inner.contains_key("suffix") => {
                v.is_string() && !string_op(&inner["suffix"], v, |v, s| v.ends_with(s))
            }
            Value::Object(inner) => panic!("unsupported anything-but operand {inner:?}"),
            scalar => !same(scalar, v),
        },
        "numeric" => {
            let Some(x) = v.as_f64().filter(|_| v.is_number()) else {
                return false;
            };
            let parts = arg
                .as_array()
                .unwrap_or_else(|| panic!("numeric takes [op, n, ...], not {arg}"));
            parts.chunks(2).all(|pair| {
                let n = pair
                    .get(1)
                    .and_then(Value::as_f64)
                    .unwrap_or_else(|| panic!("numeric operand missing in {arg}"));
                match pair[0].as_str() {
                    Some("<") => x < n,
                    Some("<=") => x <= n,
                    Some("=") => x == n,
                    Some(">") => x > n,
                    Some(">=") => x >= n,
                    other => panic!("unsupported numeric operator {other:?}"),
                }
            })
        }
        other => panic!("this test matcher does not implement {other:?}: add it before using it"),
    }
}

// ---------------------------------------------------------------------------
// The YAML subset of the template's EventPatterns: block mappings and
// sequences (two-space steps), flow `[...]` / `{...}`, plain and quoted
// scalars, and CloudFormation short tags (`!Ref X`, `!GetAtt X.Arn`) handed to
// a resolver.
// ---------------------------------------------------------------------------

/// Resolves a CloudFormation short tag (`"!Ref"`, `"!GetAtt"`) and its argument.
pub type TagResolver<'a> = &'a dyn Fn(&str, &str) -> Value;

/// The value of a YAML block (the lines under a `Key:` line, any indentation).
pub fn yaml_block(lines: &[&str], resolve: TagResolver) -> Value {
    let mut lines: Vec<String> = lines
        .iter()
        .map(|l| strip_comment(l).trim_end().to_string())
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return Value::Null;
    }
    let indent = indent_of(&lines[0]);
    let (value, next) = block(&mut lines, 0, indent, resolve);
    assert_eq!(
        next,
        lines.len(),
        "unparsed YAML from {:?}",
        lines.get(next)
    );
    value
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || line[..i].ends_with(' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Splits `key: rest` at the first `:` outside quotes and brackets that ends the
/// line or is followed by a space.
fn split_key(text: &str) -> Option<(String, &str)> {
    let (mut quote, mut depth) = (None, 0i32);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ':') if depth == 0 => {
                let rest = &text[i + 1..];
                if rest.is_empty() || rest.starts_with(' ') {
                    let key = text[..i].trim();
                    let key = key.trim_matches(|c| c == '"' || c == '\'');
                    return Some((key.to_string(), rest.trim()));
                }
            }
            _ => {}
        }
    }
    None
}

fn block(
    lines: &mut [String],
    mut i: usize,
    indent: usize,
    resolve: TagResolver,
) -> (Value, usize) {
    if lines[i].trim_start().starts_with("- ") {
        let mut items = Vec::new();
        while i < lines.len() && indent_of(&lines[i]) == indent {
            let rest = lines[i]
                .trim_start()
                .strip_prefix("- ")
                .unwrap_or_else(|| panic!("expected a `- ` sequence item: {:?}", lines[i]));
            if split_key(rest).is_some() {
                // `- key: value`: a mapping that starts on the dash line.
                lines[i] = format!("{}{}", " ".repeat(indent + 2), rest);
                let (v, next) = block(lines, i, indent + 2, resolve);
                items.push(v);
                i = next;
            } else {
                items.push(flow(rest, resolve));
                i += 1;
            }
        }
        return (Value::Array(items), i);
    }
    let mut map = Map::new();
    while i < lines.len() && indent_of(&lines[i]) == indent {
        let line = lines[i].clone();
        let (key, rest) = split_key(line.trim_start())
            .unwrap_or_else(|| panic!("expected `key: value`: {line:?}"));
        i += 1;
        let value = if rest.is_empty() {
            assert!(
                i < lines.len() && indent_of(&lines[i]) > indent,
                "`{key}:` has no value"
            );
            let inner = indent_of(&lines[i]);
            let (v, next) = block(lines, i, inner, resolve);
            i = next;
            v
        } else {
            flow(rest, resolve)
        };
        map.insert(key, value);
    }
    assert!(
        i >= lines.len() || indent_of(&lines[i]) < indent,
        "unexpected indentation: {:?}",
        lines[i]
    );
    (Value::Object(map), i)
}

/// A flow value: `[..]`, `{..}`, a quoted or plain scalar, or a tagged scalar.
pub fn flow(text: &str, resolve: TagResolver) -> Value {
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let v = flow_value(&chars, &mut pos, resolve, false);
    skip_spaces(&chars, &mut pos);
    assert_eq!(pos, chars.len(), "trailing text in flow value {text:?}");
    v
}

fn skip_spaces(c: &[char], pos: &mut usize) {
    while *pos < c.len() && c[*pos] == ' ' {
        *pos += 1;
    }
}

fn flow_value(c: &[char], pos: &mut usize, resolve: TagResolver, nested: bool) -> Value {
    skip_spaces(c, pos);
    match c.get(*pos) {
        Some('[') => {
            *pos += 1;
            let mut items = Vec::new();
            loop {
                skip_spaces(c, pos);
                if c.get(*pos) == Some(&']') {
                    *pos += 1;
                    return Value::Array(items);
                }
                items.push(flow_value(c, pos, resolve, true));
                skip_spaces(c, pos);
                match c.get(*pos) {
                    Some(',') => *pos += 1,
                    Some(']') => {}
                    other => panic!("expected , or ] in a flow sequence, found {other:?}"),
                }
            }
        }
        Some('{') => {
            *pos += 1;
            let mut map = Map::new();
            loop {
                skip_spaces(c, pos);
                if c.get(*pos) == Some(&'}') {
                    *pos += 1;
                    return Value::Object(map);
                }
                let key = match flow_scalar(c, pos, &[':']) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                assert_eq!(c.get(*pos), Some(&':'), "expected : after {key:?}");
                *pos += 1;
                let v = flow_value(c, pos, resolve, true);
                map.insert(key, v);
                skip_spaces(c, pos);
                match c.get(*pos) {
                    Some(',') => *pos += 1,
                    Some('}') => {}
                    other => panic!("expected , or }} in a flow mapping, found {other:?}"),
                }
            }
        }
        Some('!') => {
            let start = *pos;
            while *pos < c.len() && c[*pos] != ' ' {
                *pos += 1;
            }
            let tag: String = c[start..*pos].iter().collect();
            let arg = match flow_scalar(c, pos, if nested { &[',', ']', '}'] } else { &[] }) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            resolve(&tag, &arg)
        }
        _ => flow_scalar(c, pos, if nested { &[',', ']', '}'] } else { &[] }),
    }
}

fn flow_scalar(c: &[char], pos: &mut usize, stops: &[char]) -> Value {
    skip_spaces(c, pos);
    if let Some(&q) = c.get(*pos).filter(|q| **q == '"' || **q == '\'') {
        *pos += 1;
        let start = *pos;
        while *pos < c.len() && c[*pos] != q {
            *pos += 1;
        }
        let s: String = c[start..*pos].iter().collect();
        *pos += 1;
        skip_spaces(c, pos);
        return Value::String(s);
    }
    let start = *pos;
    while *pos < c.len() && !stops.contains(&c[*pos]) {
        *pos += 1;
    }
    let s: String = c[start..*pos].iter().collect::<String>().trim().to_string();
    match s.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" | "~" => Value::Null,
        _ => s
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| s.parse::<f64>().ok().map(Value::from))
            .unwrap_or(Value::String(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_tags(tag: &str, arg: &str) -> Value {
        json!(format!("{tag} {arg}"))
    }

    #[test]
    fn yaml_subset_reads_block_flow_and_tags() {
        let text = "
        source: [aws.secretsmanager]
        detail-type: [AWS API Call via CloudTrail]
        detail:
          # a comment
          errorCode: [{ \"exists\": false }]
          type: [{ prefix: \"CredentialAccess:RDS/\" }]
          eventName: !Ref Names
          $or:
            - userIdentity:
                arn: [{ anything-but: [!GetAtt A.Arn, !GetAtt B.Arn] }]
            - userIdentity: { type: [Root] }
          n: [3, 1.5]";
        let lines: Vec<&str> = text.lines().collect();
        let v = yaml_block(&lines, &no_tags);
        assert_eq!(
            v,
            json!({
                "source": ["aws.secretsmanager"],
                "detail-type": ["AWS API Call via CloudTrail"],
                "detail": {
                    "errorCode": [{"exists": false}],
                    "type": [{"prefix": "CredentialAccess:RDS/"}],
                    "eventName": "!Ref Names",
                    "$or": [
                        {"userIdentity": {"arn": [{"anything-but": ["!GetAtt A.Arn", "!GetAtt B.Arn"]}]}},
                        {"userIdentity": {"type": ["Root"]}}
                    ],
                    "n": [3, 1.5]
                }
            })
        );
    }

    /// The example event of "Content filtering in Amazon EventBridge event
    /// patterns" (docs.aws.amazon.com/eventbridge/latest/userguide/
    /// eb-event-patterns-content-based-filtering.html), used by its examples.
    fn documented_event() -> Value {
        json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "EC2 Instance State-change Notification",
            "source": "aws.ec2",
            "account": "111122223333",
            "time": "2017-10-02T18:43:48Z",
            "region": "us-west-1",
            "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
            "detail": {
                "instance-id": "i-1234567890abcdef0",
                "state": "pending",
                "c-count": 5,
                "d-count": 7,
                "x-limit": 301.8
            }
        })
    }

    /// Each documented example with the outcome the documentation gives
    /// (pages cited in the module comment), plus its negation.
    #[test]
    fn matcher_agrees_with_the_documented_examples() {
        let event = documented_event();
        let cases = [
            // Prefix matching: "time" starts with "2017-10-02".
            (json!({"time": [{"prefix": "2017-10-02"}]}), true),
            (json!({"time": [{"prefix": "2018-"}]}), false),
            // Prefix ignoring case.
            (
                json!({"source": [{"prefix": {"equals-ignore-case": "AWS.EC"}}]}),
                true,
            ),
            // Suffix.
            (
                json!({"detail": {"instance-id": [{"suffix": "def0"}]}}),
                true,
            ),
            // Anything-but: a value, a list, a prefix; numbers too.
            (
                json!({"detail": {"state": [{"anything-but": "initializing"}]}}),
                true,
            ),
            (
                json!({"detail": {"state": [{"anything-but": "pending"}]}}),
                false,
            ),
            (
                json!({"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}),
                true,
            ),
            (
                json!({"detail": {"state": [{"anything-but": ["stopped", "pending"]}]}}),
                false,
            ),
            (
                json!({"detail": {"state": [{"anything-but": {"prefix": "init"}}]}}),
                true,
            ),
            (
                json!({"detail": {"state": [{"anything-but": {"prefix": "pend"}}]}}),
                false,
            ),
            (
                json!({"detail": {"x-limit": [{"anything-but": 123}]}}),
                true,
            ),
            (
                json!({"Region": [{"anything-but": {"prefix": "us-"}}]}),
                false,
            ),
            (
                json!({"region": [{"anything-but": {"prefix": "us-"}}]}),
                false,
            ),
            // Numeric: the documented c-count / d-count / x-limit pattern.
            (
                json!({"detail": {
                    "c-count": [{"numeric": [">", 0, "<=", 5]}],
                    "d-count": [{"numeric": ["<", 10]}],
                    "x-limit": [{"numeric": ["=", 3.018e2]}]
                }}),
                true,
            ),
            (
                json!({"detail": {"c-count": [{"numeric": [">", 5]}]}}),
                false,
            ),
            // Exists: the field is there, or is not.
            (json!({"detail": {"state": [{"exists": true}]}}), true),
            (json!({"detail": {"state": [{"exists": false}]}}), false),
            (json!({"detail": {"missing": [{"exists": false}]}}), true),
            (json!({"detail": {"missing": [{"exists": true}]}}), false),
            // A field the event lacks matches no value and no anything-but:
            // the reason issue 11 adds `$or` + `exists: false` to the rules.
            (json!({"detail": {"missing": ["x"]}}), false),
            (
                json!({"detail": {"missing": [{"anything-but": "x"}]}}),
                false,
            ),
            // Every field must match (AND); values in one array are OR.
            (
                json!({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"], "detail": {"state": ["running", "pending"]}}),
                true,
            ),
            (
                json!({"source": ["aws.ec2"], "detail": {"state": ["running"]}}),
                false,
            ),
            // An array in the event matches if any element matches.
            (
                json!({"resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0", "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f"]}),
                true,
            ),
            (json!({"resources": [{"prefix": "arn:aws:s3"}]}), false),
            // $or: the documented numeric alternatives, and source + $or.
            (
                json!({"detail": {"$or": [
                    {"c-count": [{"numeric": [">", 0, "<=", 5]}]},
                    {"d-count": [{"numeric": ["<", 10]}]},
                    {"x-limit": [{"numeric": ["=", 3.018e2]}]}
                ]}}),
                true,
            ),
            (
                json!({"source": ["aws.ec2"], "$or": [{"metricName": ["CPUUtilization", "ReadLatency"]}, {"namespace": ["AWS/EC2", "AWS/ES"]}]}),
                false,
            ),
            (
                json!({"source": ["aws.ec2"], "$or": [{"region": ["us-west-1"]}, {"namespace": ["AWS/EC2"]}]}),
                true,
            ),
        ];
        let mut wrong = Vec::new();
        for (pattern, expected) in &cases {
            if matches(pattern, &event) != *expected {
                wrong.push(format!(
                    "{pattern} should {}match",
                    if *expected { "" } else { "not " }
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// From the same page: `{"detail": {"c-count": [{"exists": false}]}}`
    /// matches an event without `c-count`; exists only looks at leaves.
    #[test]
    fn exists_false_on_a_missing_parent_matches() {
        let pattern = json!({"detail": {"userIdentity": {"sessionContext": {"sessionIssuer": {"arn": [{"exists": false}]}}}}});
        assert!(matches(
            &pattern,
            &json!({"detail": {"userIdentity": {"type": "Root"}}})
        ));
        assert!(matches(&pattern, &json!({"detail": {}})));
        assert!(!matches(
            &pattern,
            &json!({"detail": {"userIdentity": {"sessionContext": {"sessionIssuer": {"arn": "arn:aws:iam::1:role/r"}}}}})
        ));
    }
}
