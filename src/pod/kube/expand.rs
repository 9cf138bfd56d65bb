//! Kubernetes' `$(VAR)` expansion in env values, command and args.

use std::collections::HashMap;

pub(super) type Env = Vec<(String, String)>;
pub(super) type Argv = Option<Vec<String>>;

/// Kubernetes' `$(VAR)` references: each env value may use the variables
/// defined before it; command and args may use them all. `$$` is a literal
/// `$`; a reference to an undefined variable is left as written.
pub(super) fn expand_references(env: Env, command: Argv, args: Argv) -> (Env, Argv, Argv) {
    let mut defined: HashMap<String, String> = HashMap::new();
    let mut expanded = Vec::with_capacity(env.len());
    for (k, v) in env {
        let v = expand(&v, &defined);
        defined.insert(k.clone(), v.clone());
        expanded.push((k, v));
    }
    let all = |list: Option<Vec<String>>| list.map(|l| l.iter().map(|a| expand(a, &defined)).collect());
    let command = all(command);
    let args = all(args);
    (expanded, command, args)
}

/// Kubernetes' `third_party/forked/golang/expansion.Expand`, on chars.
fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A lone trailing '$' is kept.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expansion_matches_kubernetes() {
        let v = vars(&[("A", "x"), ("EMPTY", "")]);
        let cases = [
            ("$(A)", "x"),
            ("a$(A)b$(A)", "axbx"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$x"),
            ("$(B)", "$(B)"),
            ("$(EMPTY)-", "-"),
            ("$A", "$A"),
            ("$", "$"),
            ("$(A", "$(A"),
            ("$(", "$("),
            ("é$é$(A)", "é$éx"),
            ("no refs", "no refs"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &v), want, "{input}");
        }
    }

    #[test]
    fn env_sees_only_earlier_variables() {
        let env = vec![("A".into(), "$(B)".into()), ("B".into(), "b".into()), ("C".into(), "$(B)$(A)".into())];
        let (env, command, args) = expand_references(env, Some(vec!["$(C)".into()]), None);
        assert_eq!(env[0].1, "$(B)");
        assert_eq!(env[2].1, "b$(B)");
        assert_eq!(command, Some(vec!["b$(B)".to_string()]));
        assert_eq!(args, None);
    }
}
