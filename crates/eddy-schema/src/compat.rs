//! The compatibility checker: does every payload valid under an old JSON Schema still
//! decode under the new one? The rules are those of `docs/events.md`, each breach
//! naming the field (by path: `lines[].quantity`) and the rule it breaks.
//!
//! What it understands is what `schemars` generates for serde types: objects with
//! `properties` and `required`, arrays with `items`, maps with `additionalProperties`,
//! `$ref` into `$defs`, nullability as `"type": [.., "null"]` or an `anyOf` with a null
//! alternative, `format` (`int32`, `uint64`, `uuid`, ..) and enumerations (`enum`,
//! `const`). Other unions are compared by the shapes of their alternatives, not field
//! by field.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// A rule of `docs/events.md` that a change can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Old payloads carry the field, or carry it with its old type.
    NeverRemoveOrRetype,
    /// Old payloads may lack the field (or hold `null`).
    NeverMakeOptionalRequired,
    /// Old payloads lack the field altogether.
    NewFieldsOptional,
}

impl Rule {
    /// The rule as `docs/events.md` states it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::NeverRemoveOrRetype => "never remove or retype a field",
            Rule::NeverMakeOptionalRequired => "never make an optional field required",
            Rule::NewFieldsOptional => "a new field is optional or has a default",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Removed,
    /// Its type no longer accepts every value the old one did.
    Retyped {
        from: String,
        to: String,
    },
    /// It could be absent (or `null`) and no longer can.
    MadeRequired,
    /// It is new and required, with no default.
    AddedRequired,
}

impl Change {
    pub fn rule(&self) -> Rule {
        match self {
            Change::Removed | Change::Retyped { .. } => Rule::NeverRemoveOrRetype,
            Change::MadeRequired => Rule::NeverMakeOptionalRequired,
            Change::AddedRequired => Rule::NewFieldsOptional,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Removed => f.write_str("removed"),
            Change::Retyped { from, to } => write!(f, "retyped from {from} to {to}"),
            Change::MadeRequired => f.write_str("made required (it was optional)"),
            Change::AddedRequired => f.write_str("added as required without a default"),
        }
    }
}

/// One way a new schema fails payloads the old one accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub event_type: String,
    /// The schema version both schemas claim to describe.
    pub version: u32,
    /// The field: `total_cents`, `lines[].quantity`, `prices.*` for a map's values;
    /// empty for the payload as a whole.
    pub path: String,
    pub change: Change,
}

impl Breach {
    pub fn rule(&self) -> Rule {
        self.change.rule()
    }
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}: ", self.event_type, self.version)?;
        if self.path.is_empty() {
            f.write_str("the payload")?;
        } else {
            write!(f, "field {:?}", self.path)?;
        }
        write!(f, " {} (rule: {})", self.change, self.rule())
    }
}

impl std::error::Error for Breach {}

/// How deep nested `$ref`s and fields are followed: a recursive type ends here.
const DEPTH_MAX: usize = 64;

/// The breaches of `new_schema` against `old_schema`, both describing `version` of
/// `event_type`; empty when every payload valid under the old schema still decodes.
pub fn check(
    event_type: &str,
    version: u32,
    old_schema: &Value,
    new_schema: &Value,
) -> Vec<Breach> {
    let mut checker = Checker {
        old_root: old_schema,
        new_root: new_schema,
        changes: Vec::new(),
    };
    checker.compare(String::new(), old_schema, new_schema, 0);
    checker
        .changes
        .into_iter()
        .map(|(path, change)| Breach {
            event_type: event_type.to_owned(),
            version,
            path,
            change,
        })
        .collect()
}

struct Checker<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    changes: Vec<(String, Change)>,
}

impl<'a> Checker<'a> {
    fn compare(&mut self, path: String, old: &'a Value, new: &'a Value, depth: usize) {
        if depth > DEPTH_MAX {
            return;
        }
        let old = Shape::of(self.old_root, old);
        let new = Shape::of(self.new_root, new);
        if !new.accepts_types_of(&old) {
            self.changes.push((
                path,
                Change::Retyped {
                    from: old.describe(&new),
                    to: new.describe(&old),
                },
            ));
            return;
        }
        if old.nullable && !new.nullable {
            self.changes.push((
                path,
                Change::Retyped {
                    from: old.describe_with_null(),
                    to: new.describe_with_null(),
                },
            ));
            return;
        }
        if let (Some(old_props), Some(new_props)) = (old.properties, new.properties) {
            let old_required = required(old.node);
            let new_required = required(new.node);
            for (name, old_field) in old_props {
                let field_path = join(&path, name);
                let Some(new_field) = new_props.get(name) else {
                    self.changes.push((field_path, Change::Removed));
                    continue;
                };
                let was_optional = !old_required.contains(name.as_str());
                if was_optional && new_required.contains(name.as_str()) {
                    self.changes.push((field_path, Change::MadeRequired));
                    continue;
                }
                self.compare(field_path, old_field, new_field, depth + 1);
            }
            for name in new_props.keys() {
                if !old_props.contains_key(name) && new_required.contains(name.as_str()) {
                    self.changes
                        .push((join(&path, name), Change::AddedRequired));
                }
            }
        }
        if let (Some(old_items), Some(new_items)) = (old.items, new.items) {
            self.compare(format!("{path}[]"), old_items, new_items, depth + 1);
        }
        if let (Some(old_values), Some(new_values)) = (old.map_values, new.map_values) {
            self.compare(join(&path, "*"), old_values, new_values, depth + 1);
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn required(node: &Value) -> BTreeSet<&str> {
    node.get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `node` with `$ref`s followed (at most [`DEPTH_MAX`] of them).
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..DEPTH_MAX {
        let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
            return node;
        };
        // `#/$defs/Name` (2020-12) or `#/definitions/Name`: a JSON pointer into the root.
        let Some(target) = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
        else {
            return node;
        };
        node = target;
    }
    node
}

/// What a schema node accepts, as far as the rules care.
struct Shape<'a> {
    node: &'a Value,
    /// JSON types accepted, `null` aside; `None` for any.
    types: Option<BTreeSet<String>>,
    nullable: bool,
    format: Option<&'a str>,
    /// The only values accepted (`enum`, `const`, or a union of them).
    values: Option<Vec<&'a Value>>,
    properties: Option<&'a serde_json::Map<String, Value>>,
    items: Option<&'a Value>,
    map_values: Option<&'a Value>,
    /// Alternatives of a union that is not a plain nullable or enumeration, described.
    union: Option<BTreeSet<String>>,
}

impl<'a> Shape<'a> {
    fn of(root: &'a Value, node: &'a Value) -> Self {
        let node = resolve(root, node);
        let mut shape = Shape {
            node,
            types: None,
            nullable: false,
            format: node.get("format").and_then(Value::as_str),
            values: None,
            properties: node.get("properties").and_then(Value::as_object),
            items: node.get("items").filter(|items| items.is_object()),
            map_values: node
                .get("additionalProperties")
                .filter(|values| values.is_object()),
            union: None,
        };
        match node.get("type") {
            Some(Value::String(t)) => shape.add_type(t),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .for_each(|t| shape.add_type(t)),
            _ => {}
        }
        if let Some(values) = node.get("enum").and_then(Value::as_array) {
            shape.nullable |= values.iter().any(Value::is_null);
            shape.values = Some(values.iter().filter(|v| !v.is_null()).collect());
        }
        if let Some(value) = node.get("const") {
            shape.values = Some(vec![value]);
        }
        let alternatives = node
            .get("anyOf")
            .or_else(|| node.get("oneOf"))
            .and_then(Value::as_array);
        if let Some(alternatives) = alternatives {
            shape.absorb(root, alternatives);
        }
        shape
    }

    fn add_type(&mut self, t: &str) {
        if t == "null" {
            self.nullable = true;
        } else {
            self.types
                .get_or_insert_with(BTreeSet::new)
                .insert(t.to_owned());
        }
    }

    /// Takes in a union's alternatives: null ones make it nullable; one other is the
    /// shape itself; several enumerations are one; anything else stays a union.
    fn absorb(&mut self, root: &'a Value, alternatives: &'a [Value]) {
        let mut others: Vec<Shape<'a>> = Vec::new();
        for alternative in alternatives {
            let alternative = Shape::of(root, alternative);
            let only_null = alternative.nullable
                && alternative.types.is_none()
                && alternative.values.is_none()
                && alternative.union.is_none();
            if only_null {
                self.nullable = true;
            } else {
                self.nullable |= alternative.nullable;
                others.push(alternative);
            }
        }
        if others.len() == 1 {
            let nullable = self.nullable;
            if let Some(only) = others.pop() {
                *self = only;
            }
            self.nullable |= nullable;
            return;
        }
        if !others.is_empty() && others.iter().all(|o| o.values.is_some()) {
            for other in &others {
                if let Some(types) = &other.types {
                    types.iter().for_each(|t| self.add_type(t));
                }
            }
            self.values = Some(
                others
                    .iter()
                    .flat_map(|o| o.values.clone().unwrap_or_default())
                    .collect(),
            );
            return;
        }
        if !others.is_empty() {
            self.union = Some(others.iter().map(Shape::describe_plain).collect());
        }
    }

    /// Whether every non-null value of `old`'s kinds is one of this shape's kinds.
    fn accepts_types_of(&self, old: &Shape<'_>) -> bool {
        if let Some(union) = &self.union {
            return match &old.union {
                Some(old_union) => old_union.is_subset(union),
                None => union.contains(&old.describe_plain()),
            };
        }
        if old.union.is_some() {
            return self.types.is_none() && self.values.is_none();
        }
        if let Some(values) = &self.values {
            let Some(old_values) = &old.values else {
                return false;
            };
            if !old_values.iter().all(|v| values.contains(v)) {
                return false;
            }
        }
        let Some(types) = &self.types else {
            return true;
        };
        let Some(old_types) = &old.types else {
            // Anything before; something in particular now. (An enumeration without a
            // `type` keeps its values' types.)
            return old
                .values
                .as_ref()
                .is_some_and(|values| values.iter().all(|v| types.contains(json_type(v))));
        };
        let types_ok = old_types
            .iter()
            .all(|t| types.contains(t) || (t == "integer" && types.contains("number")));
        types_ok && format_widens(old.format, self.format)
    }

    fn base(&self) -> String {
        if let Some(union) = &self.union {
            return format!(
                "one of ({})",
                union.iter().cloned().collect::<Vec<_>>().join(" | ")
            );
        }
        if let Some(values) = &self.values {
            let shown: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            return format!("one of {}", shown.join(", "));
        }
        match &self.types {
            None => "any value".to_owned(),
            Some(types) => types.iter().cloned().collect::<Vec<_>>().join(" or "),
        }
    }

    /// This shape described for a retype message beside `other`: formats shown only
    /// when the types alone would read the same.
    fn describe(&self, other: &Shape<'_>) -> String {
        let base = self.base();
        match self.format {
            Some(format) if base == other.base() => format!("{base} ({format})"),
            None if base == other.base() && other.format.is_some() => {
                format!("{base} (any format)")
            }
            _ => base,
        }
    }

    /// Types (or values) and format, nullability aside.
    fn describe_plain(&self) -> String {
        match self.format {
            Some(format) => format!("{} ({format})", self.base()),
            None => self.base(),
        }
    }

    fn describe_with_null(&self) -> String {
        let mut text = self.describe_plain();
        if self.nullable {
            text.push_str(" or null");
        }
        text
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether values of `old` format all fit `new`: the same format, no format now, or a
/// wider number (`int32` → `int64`, `uint32` → `int64`, `float` → `double`).
fn format_widens(old: Option<&str>, new: Option<&str>) -> bool {
    let Some(new) = new else {
        return true;
    };
    let Some(old) = old else {
        return false;
    };
    if old == new || (old == "float" && new == "double") {
        return true;
    }
    match (integer_format(old), integer_format(new)) {
        (Some((old_signed, old_bits)), Some((new_signed, new_bits))) => {
            if old_signed == new_signed {
                new_bits >= old_bits
            } else {
                // Unsigned into signed needs a bit more; signed never fits unsigned.
                !old_signed && new_signed && new_bits > old_bits
            }
        }
        _ => false,
    }
}

/// `(signed, bits)` of schemars' integer formats (`isize`/`usize` are `int`/`uint`,
/// taken as 64 bits).
fn integer_format(format: &str) -> Option<(bool, u32)> {
    let (signed, bits) = match format.strip_prefix("uint") {
        Some(bits) => (false, bits),
        None => (true, format.strip_prefix("int")?),
    };
    let bits = if bits.is_empty() {
        64
    } else {
        bits.parse().ok()?
    };
    Some((signed, bits))
}
