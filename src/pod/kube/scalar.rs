//! Scalars coerced the way Kubernetes' decoder does: a string must be a
//! string (an unquoted `8080` is not), integers accept YAML 1.1's forms but
//! not a leading zero, quantities go through [`crate::pod::quantity`].

use super::walk::{fail, Located, Res};
use super::yaml::{short, Node, ScalarKind, Value};
use crate::pod::quantity;

pub(super) fn scalar_text(node: &Node) -> String {
    match &node.value {
        Value::Scalar(s) => short(&s.text),
        _ => node.describe(),
    }
}

pub(super) fn string(node: &Node, path: &str) -> Res<String> {
    match &node.value {
        Value::Scalar(s) if s.kind == ScalarKind::Str => Ok(s.text.clone()),
        Value::Scalar(s) if s.kind != ScalarKind::Null => fail(
            node.mark,
            format!("{path} must be a string, not {}; quote it (Kubernetes rejects it too)", node.describe()),
        ),
        _ => fail(node.mark, format!("{path} must be a string, not {}", node.describe())),
    }
}

pub(super) fn boolean(node: &Node, path: &str) -> Res<bool> {
    match &node.value {
        Value::Scalar(s) => match s.kind {
            ScalarKind::Bool(b) => Ok(b),
            _ => fail(node.mark, format!("{path} must be true or false, not {}", node.describe())),
        },
        _ => fail(node.mark, format!("{path} must be true or false, not {}", node.describe())),
    }
}

pub(super) fn integer(node: &Node, path: &str) -> Res<i64> {
    let not_int = || fail(node.mark, format!("{path} must be an integer, not {}", node.describe()));
    let s = match &node.value {
        Value::Scalar(s) if s.kind == ScalarKind::Int => &s.text,
        _ => return not_int(),
    };
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s.as_str()),
    };
    let digits = digits.replace('_', "");
    let (radix, body) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else if let Some(b) = digits.strip_prefix("0b") {
        (2, b)
    } else if digits.len() > 1 && digits.starts_with('0') {
        return fail(
            node.mark,
            format!("{path}: {} has a leading zero, which YAML 1.1 reads as octal; write it without", short(s)),
        );
    } else {
        (10, digits.as_str())
    };
    match i64::from_str_radix(body, radix) {
        Ok(n) if negative => Ok(-n),
        Ok(n) => Ok(n),
        Err(_) => fail(node.mark, format!("{path}: {} is out of range", short(s))),
    }
}

pub(super) fn port_number(node: &Node, path: &str) -> Res<u16> {
    let n = integer(node, path)?;
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => fail(node.mark, format!("{path} must be a port number between 1 and 65535, not {n}")),
    }
}

pub(super) fn quantity_of(node: &Node, path: &str, parse: fn(&str) -> Result<u64, quantity::QuantityError>) -> Res<u64> {
    match &node.value {
        Value::Scalar(s) if matches!(s.kind, ScalarKind::Str | ScalarKind::Int | ScalarKind::Float) => {
            parse(&s.text).map_err(|e| Located { mark: node.mark, message: format!("{path}: {e}") })
        }
        _ => fail(node.mark, format!("{path} must be a quantity such as 256Mi or 500m, not {}", node.describe())),
    }
}
