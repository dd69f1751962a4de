//! Schemas that refer to themselves without writing anything in between: `{"$ref": "#"}`, a
//! `$defs` entry whose `$ref` leads back to itself, `anyOf`/`allOf`/`oneOf` members that do,
//! anywhere in the schema (a property's schema too). Such a schema describes no finite JSON
//! value; llguidance compiles it, and the grammar dead-ends when generation reaches it
//! (`NoExtensionBias`), possibly tokens into the answer. Recursion through `properties`,
//! `items` and the like is fine (a tree): something is written before the schema recurs.

use std::collections::HashMap;

use serde_json::Value;

/// The JSON pointer (from `#`) of a schema that reaches itself without writing anything, if
/// there is one.
pub fn unproductive_cycle(root: &Value) -> Option<String> {
    let mut nodes = Vec::new();
    collect(root, String::new(), &mut nodes);
    let index: HashMap<*const Value, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (node, _))| (*node as *const Value, i))
        .collect();
    // Edges that write nothing first: `$ref` and the members of `anyOf`/`allOf`/`oneOf`.
    let edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|(node, _)| {
            let mut to = Vec::new();
            if let Some(target) = node
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| resolve(root, r))
            {
                to.extend(index.get(&(target as *const Value)));
            }
            for combinator in ["anyOf", "allOf", "oneOf"] {
                for member in node
                    .get(combinator)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    to.extend(index.get(&(member as *const Value)));
                }
            }
            to
        })
        .collect();
    // Depth-first search with colours: reaching a node still on the path is a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        New,
        OnPath,
        Done,
    }
    let mut colour = vec![Colour::New; nodes.len()];
    for start in 0..nodes.len() {
        if colour[start] != Colour::New {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        colour[start] = Colour::OnPath;
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            match edges[node].get(*next) {
                Some(&to) => {
                    *next += 1;
                    match colour[to] {
                        Colour::OnPath => return Some(format!("#{}", nodes[to].1)),
                        Colour::New => {
                            colour[to] = Colour::OnPath;
                            stack.push((to, 0));
                        }
                        Colour::Done => {}
                    }
                }
                None => {
                    colour[node] = Colour::Done;
                    stack.pop();
                }
            }
        }
    }
    None
}

/// Every object in the schema, with its JSON pointer.
fn collect<'a>(value: &'a Value, pointer: String, out: &mut Vec<(&'a Value, String)>) {
    match value {
        Value::Object(fields) => {
            out.push((value, pointer.clone()));
            for (key, field) in fields {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                collect(field, format!("{pointer}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The schema a local `$ref` (`#`, `#/$defs/name`) points at; `None` for others.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cycles_that_write_nothing_are_found_and_trees_are_not() {
        assert_eq!(unproductive_cycle(&json!({"$ref": "#"})), Some("#".into()));
        assert!(unproductive_cycle(
            &json!({"$ref": "#/$defs/N", "$defs": {"N": {"$ref": "#/$defs/N"}}})
        )
        .is_some());
        assert!(unproductive_cycle(
            &json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/A"}},
            "$defs": {"A": {"anyOf": [{"type": "null"}, {"allOf": [{"$ref": "#/$defs/A"}]}]}}})
        )
        .is_some());
        assert_eq!(
            unproductive_cycle(
                &json!({"$ref": "#/$defs/T", "$defs": {"T": {"type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/T"}}}}}})
            ),
            None
        );
        assert_eq!(
            unproductive_cycle(
                &json!({"type": "object", "properties": {"$ref": {"type": "string"}}})
            ),
            None
        );
    }
}
