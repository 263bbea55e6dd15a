//! Templates: one `[[devices]]` table that stands for many devices, and the small language of
//! its `{...}` placeholders. Pure: TOML values in, TOML values out; no file, no device key
//! known here (the loader deserializes what comes out like any other device).
//!
//! # `for`
//! `for = { floor = "1..=32", room = ["01", "02", "03", "04"] }` makes one device per
//! combination of its variables' values (here 128). A variable takes a range of integers,
//! `"a..=b"` with both ends included (`"-2..=-1"` for two basement floors), or a list of
//! strings or integers. Combinations come in the order of the variables' names (TOML tables
//! keep no order), the last varying fastest: `floor=1 room=01`, `floor=1 room=02`, ...
//!
//! # Placeholders
//! In every string of the table (nested ones too, such as a point's name), `{...}` is
//! replaced by a value of the instance:
//! - `{room}`: the variable's value as given (`03` stays `03`; `1号楼` stays `1号楼`);
//! - `{room_index}`: the value's position in its range or list, from 0;
//! - `{floor:02}`: an integer padded with zeros to 2 digits (`-1` becomes `-01`);
//! - `{(floor - 1) * 4 + room_index + 1}`: integer arithmetic with `+ - * / %`, parentheses
//!   and unary minus. `/` and `%` are Euclidean: the remainder is never negative, so
//!   `(floor - 1) / 8` groups basement floors with the floor below, not the one above. A
//!   string variable takes part if it holds an integer (`"03"` is 3);
//! - `{{` and `}}`: a literal brace.
//!
//! A result is always a string: keys that take integers (`unit_id`, `poll_interval_ms`, ...)
//! accept a string that holds one (see `number` in `config.rs`), so a template never needs
//! to know which keys are numbers, and a key another module adds is templated like the rest.
//!
//! # Invariants
//! - A template's strings are parsed once, before any instance: a syntax error or an unknown
//!   variable is reported once, naming the key, not once per instance.
//! - Every instance renders every string; an instance-specific failure (a text that is not a
//!   number, a division by zero, an overflow) names the key and the instance.
//! - Expansion is bounded by the caller before it starts ([`Variables::count`]).

use std::fmt;

/// The most variables one `for` may have.
pub const MAX_VARIABLES: usize = 8;

/// The widest `{x:0N}` padding.
const MAX_WIDTH: usize = 20;

/// A variable's value in one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Text(t) => f.write_str(t),
        }
    }
}

impl Value {
    /// The value as an integer for arithmetic, or why not.
    fn int(&self, name: &str) -> Result<i64, String> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Text(t) => t.trim().parse().map_err(|_| {
                format!("{name} is {t:?}, not a number: only {{{name}}} alone inserts it as it is")
            }),
        }
    }
}

/// The variables of a `for` table: each name with the values it takes, in name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Variables(Vec<(String, Vec<Value>)>);

/// One combination of the variables' values: (name, value, position in its list).
#[derive(Debug, Clone, PartialEq)]
pub struct Instance(Vec<(String, Value, usize)>);

impl Instance {
    /// Variables given directly, e.g. a CSV row's cells (no positions: a template for them
    /// is made with `indexed = false`).
    pub fn of(values: impl IntoIterator<Item = (String, String)>) -> Instance {
        Instance(
            values
                .into_iter()
                .map(|(name, value)| (name, Value::Text(value), 0))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<Value> {
        if let Some((_, v, _)) = self.0.iter().find(|(n, _, _)| n == name) {
            return Some(v.clone());
        }
        let base = name.strip_suffix("_index")?;
        let (_, _, i) = self.0.iter().find(|(n, _, _)| n == base)?;
        Some(Value::Int(i64::try_from(*i).unwrap_or(i64::MAX)))
    }
}

impl fmt::Display for Instance {
    /// `floor=12 room=03`: what tells this instance from the others in a message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value, _)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match value {
                Value::Text(t) if t.is_empty() || t.contains([' ', '=', '.']) => {
                    write!(f, "{name}={t:?}")?
                }
                _ => write!(f, "{name}={value}")?,
            }
        }
        Ok(())
    }
}

impl Variables {
    /// Read a `for` value.
    pub fn parse(value: &toml::Value) -> Result<Variables, String> {
        let Some(table) = value.as_table() else {
            return Err(
                "must be a table of variables, e.g. for = { floor = \"1..=32\", room = [\"01\", \"02\"] }"
                    .into(),
            );
        };
        if table.is_empty() {
            return Err("has no variables: give at least one, e.g. floor = \"1..=32\"".into());
        }
        if table.len() > MAX_VARIABLES {
            return Err(format!(
                "has {} variables; at most {MAX_VARIABLES}",
                table.len()
            ));
        }
        let mut out = Vec::with_capacity(table.len());
        for (name, values) in table {
            if !is_name(name) {
                return Err(format!(
                    "variable {name:?}: a name is ASCII letters, digits and '_', not starting with a digit"
                ));
            }
            if name.ends_with("_index") {
                return Err(format!(
                    "variable {name:?}: names ending in _index are taken ({{x_index}} is x's position)"
                ));
            }
            let values = values_of(values).map_err(|why| format!("{name}: {why}"))?;
            out.push((name.clone(), values));
        }
        Ok(Variables(out))
    }

    /// How many instances: the product of the variables' counts; None if it overflows.
    pub fn count(&self) -> Option<usize> {
        self.0
            .iter()
            .try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// Every instance, the last variable varying fastest. Check [`Variables::count`] first.
    pub fn instances(&self) -> impl Iterator<Item = Instance> + '_ {
        let total = self.count().unwrap_or(0);
        (0..total).map(move |mut n| {
            let mut vars = Vec::with_capacity(self.0.len());
            for (name, values) in self.0.iter().rev() {
                let i = n % values.len();
                n /= values.len();
                vars.push((name.clone(), values[i].clone(), i));
            }
            vars.reverse();
            Instance(vars)
        })
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A variable's values: a range `"a..=b"` or a list.
fn values_of(value: &toml::Value) -> Result<Vec<Value>, String> {
    const HOW: &str = "give a range like \"1..=32\" or a list like [\"01\", \"02\"]";
    match value {
        toml::Value::String(s) => {
            let Some((a, b)) = s.split_once("..") else {
                return Err(format!("{s:?} is not a range: {HOW}"));
            };
            let Some(b) = b.strip_prefix('=') else {
                return Err(format!(
                    "{s:?}: write the range with both ends included, \"{}..={}\"",
                    a.trim(),
                    b.trim()
                ));
            };
            let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) else {
                return Err(format!(
                    "{s:?}: a range's ends are integers, e.g. \"1..=32\""
                ));
            };
            if a > b {
                return Err(format!("{s:?} is empty: its start is above its end"));
            }
            // Bounded by the caller's device limit; this only keeps the Vec sane.
            if b.abs_diff(a) >= 1_000_000 {
                return Err(format!("{s:?} has more than 1000000 values"));
            }
            Ok((a..=b).map(Value::Int).collect())
        }
        toml::Value::Array(items) if items.is_empty() => Err(format!("the list is empty: {HOW}")),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(Value::Text(s.clone())),
                toml::Value::Integer(i) => Ok(Value::Int(*i)),
                other => Err(format!(
                    "a list holds strings or integers, not {}",
                    other.type_str()
                )),
            })
            .collect(),
        other => Err(format!("is a {}: {HOW}", other.type_str())),
    }
}

/// A parsed string: literal text and placeholders.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Segment>);

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Slot { expr: Expr, width: Option<usize> },
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Int(i64),
    Var(String),
    Neg(Box<Expr>),
    Op(char, Box<Expr>, Box<Expr>),
}

/// Whether `text` has placeholders or escaped braces (otherwise it stays as it is).
fn has_braces(text: &str) -> bool {
    text.contains(['{', '}'])
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, n)| n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, n)| n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(format!(
                        "{text:?}: a '}}' without its '{{' (write '}}}}' for a brace)"
                    ));
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "{text:?}: a '{{' without its '}}' (write '{{{{' for a brace)"
                        ));
                    };
                    let inside = &rest[..end];
                    // Skip what the placeholder holds, and its '}'.
                    for _ in 0..=inside.chars().count() {
                        chars.next();
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut literal)));
                    }
                    segments.push(slot(inside).map_err(|why| format!("{{{inside}}}: {why}"))?);
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Text(literal));
        }
        Ok(Template(segments))
    }

    /// Every variable the template names.
    fn names(&self) -> Vec<&str> {
        fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
            match e {
                Expr::Int(_) => {}
                Expr::Var(n) => out.push(n),
                Expr::Neg(a) => walk(a, out),
                Expr::Op(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        for s in &self.0 {
            if let Segment::Slot { expr, .. } = s {
                walk(expr, &mut out);
            }
        }
        out
    }

    fn render(&self, instance: &Instance) -> Result<String, String> {
        let mut out = String::new();
        for s in &self.0 {
            match s {
                Segment::Text(t) => out.push_str(t),
                // A variable alone is inserted as it is.
                Segment::Slot {
                    expr: Expr::Var(name),
                    width: None,
                } => match instance.get(name) {
                    Some(v) => out.push_str(&v.to_string()),
                    None => return Err(format!("no variable {name}")),
                },
                Segment::Slot { expr, width } => {
                    let v = eval(expr, instance)?;
                    match width {
                        Some(w) => out.push_str(&format!("{v:0w$}")),
                        None => out.push_str(&v.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What is inside `{...}`: an expression and an optional `:0N`.
fn slot(inside: &str) -> Result<Segment, String> {
    let (expr, width) = match inside.rsplit_once(':') {
        Some((expr, spec)) => {
            let digits = spec.trim().strip_prefix('0').unwrap_or("");
            match digits.parse::<usize>() {
                Ok(w) if (1..=MAX_WIDTH).contains(&w) && spec.trim().starts_with('0') => {
                    (expr, Some(w))
                }
                _ => {
                    return Err(format!(
                        "after ':' give 0 and a width from 1 to {MAX_WIDTH}, e.g. {{floor:02}}"
                    ));
                }
            }
        }
        None => (inside, None),
    };
    let tokens = tokens(expr)?;
    if tokens.is_empty() {
        return Err("is empty: name a variable, e.g. {floor}".into());
    }
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.sum()?;
    if let Some(t) = parser.tokens.get(parser.at) {
        return Err(format!("unexpected {t}"));
    }
    Ok(Segment::Slot { expr, width })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Name(String),
    Sym(char),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Int(i) => write!(f, "{i}"),
            Token::Name(n) => write!(f, "{n:?}"),
            Token::Sym(c) => write!(f, "'{c}'"),
        }
    }
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_digit() {
            let mut n = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(d);
                chars.next();
            }
            out.push(Token::Int(
                n.parse().map_err(|_| format!("{n} is too large"))?,
            ));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut n = String::new();
            while let Some(&d) = chars
                .peek()
                .filter(|d| d.is_ascii_alphanumeric() || **d == '_')
            {
                n.push(d);
                chars.next();
            }
            out.push(Token::Name(n));
        } else if "+-*/%()".contains(c) {
            out.push(Token::Sym(c));
            chars.next();
        } else {
            return Err(format!(
                "{c:?} is not allowed: use variables, integers, + - * / % and parentheses"
            ));
        }
    }
    Ok(out)
}

/// Recursive descent: sum = product (('+'|'-') product)*; product = factor (('*'|'/'|'%')
/// factor)*; factor = integer | name | '(' sum ')' | '-' factor.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next_sym(&self, among: &str) -> Option<char> {
        match self.tokens.get(self.at) {
            Some(Token::Sym(c)) if among.contains(*c) => Some(*c),
            _ => None,
        }
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut left = self.product()?;
        while let Some(op) = self.next_sym("+-") {
            self.at += 1;
            left = Expr::Op(op, Box::new(left), Box::new(self.product()?));
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while let Some(op) = self.next_sym("*/%") {
            self.at += 1;
            left = Expr::Op(op, Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        match token {
            Some(Token::Int(i)) => Ok(Expr::Int(i)),
            Some(Token::Name(n)) => Ok(Expr::Var(n)),
            Some(Token::Sym('-')) => Ok(Expr::Neg(Box::new(self.factor()?))),
            Some(Token::Sym('(')) => {
                let inner = self.sum()?;
                if self.next_sym(")").is_none() {
                    return Err("a '(' without its ')'".into());
                }
                self.at += 1;
                Ok(inner)
            }
            Some(t) => Err(format!("unexpected {t}")),
            None => Err("ends too early: an operator needs a value after it".into()),
        }
    }
}

fn eval(expr: &Expr, instance: &Instance) -> Result<i64, String> {
    let overflow = || "overflows a 64-bit integer".to_string();
    match expr {
        Expr::Int(i) => Ok(*i),
        Expr::Var(name) => instance
            .get(name)
            .ok_or_else(|| format!("no variable {name}"))?
            .int(name),
        Expr::Neg(a) => eval(a, instance)?.checked_neg().ok_or_else(overflow),
        Expr::Op(op, a, b) => {
            let (a, b) = (eval(a, instance)?, eval(b, instance)?);
            match op {
                '+' => a.checked_add(b).ok_or_else(overflow),
                '-' => a.checked_sub(b).ok_or_else(overflow),
                '*' => a.checked_mul(b).ok_or_else(overflow),
                '/' | '%' if b == 0 => Err("divides by zero".into()),
                '/' => a.checked_div_euclid(b).ok_or_else(overflow),
                _ => a.checked_rem_euclid(b).ok_or_else(overflow),
            }
        }
    }
}

/// A table whose strings are templates, checked against the variables it will be given.
#[derive(Debug, Clone)]
pub struct DeviceTemplate {
    table: toml::Table,
}

impl DeviceTemplate {
    /// Parse every string of `table` (keys are not templated) and check that it names only
    /// `names`, and their `_index` when `indexed` (a `for`'s variables have positions; a CSV
    /// row's cells do not). Errors: (key path, e.g. `points[1].name`, message).
    pub fn new<'a>(
        table: toml::Table,
        names: impl IntoIterator<Item = &'a str>,
        indexed: bool,
    ) -> Result<DeviceTemplate, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let known: Vec<String> = names
            .into_iter()
            .flat_map(|n| {
                let index = indexed.then(|| format!("{n}_index"));
                std::iter::once(n.to_string()).chain(index)
            })
            .collect();
        for (key, value) in &table {
            check_strings(value, key, &known, &mut problems);
        }
        if problems.is_empty() {
            Ok(DeviceTemplate { table })
        } else {
            Err(problems)
        }
    }

    /// The table of one instance. Errors: (key path, message).
    pub fn render(&self, instance: &Instance) -> Result<toml::Table, (String, String)> {
        let mut out = self.table.clone();
        for (key, value) in out.iter_mut() {
            render_strings(value, key, instance)?;
        }
        Ok(out)
    }

    /// The template's own `id`, as written.
    #[cfg(test)]
    fn id(&self) -> Option<&str> {
        self.table.get("id").and_then(|v| v.as_str())
    }
}

fn check_strings(
    value: &toml::Value,
    path: &str,
    known: &[String],
    out: &mut Vec<(String, String)>,
) {
    match value {
        toml::Value::String(s) if has_braces(s) => match Template::parse(s) {
            Ok(t) => {
                for name in t.names() {
                    if !known.iter().any(|k| k == name) {
                        let vars: Vec<&str> = known
                            .iter()
                            .filter(|k| !k.ends_with("_index"))
                            .map(String::as_str)
                            .collect();
                        out.push((
                            path.to_string(),
                            format!(
                                "{s:?} names {name}, which is not one of the variables ({})",
                                vars.join(", ")
                            ),
                        ));
                    }
                }
            }
            Err(why) => out.push((path.to_string(), why)),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_strings(item, &format!("{path}[{i}]"), known, out);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t {
                check_strings(v, &format!("{path}.{k}"), known, out);
            }
        }
        _ => {}
    }
}

fn render_strings(
    value: &mut toml::Value,
    path: &str,
    instance: &Instance,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(s) if has_braces(s) => {
            // Parsed once already by `DeviceTemplate::new`; it cannot fail here, but a
            // failure would still be reported, not a panic.
            let rendered = Template::parse(s)
                .and_then(|t| t.render(instance))
                .map_err(|why| (path.to_string(), format!("{s:?}: {why}")))?;
            *s = rendered;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                render_strings(item, &format!("{path}[{i}]"), instance)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                render_strings(v, &format!("{path}.{k}"), instance)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Render one string for one instance.
#[cfg(test)]
fn render(text: &str, instance: &Instance) -> Result<String, String> {
    Template::parse(text)?.render(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Result<Variables, String> {
        let value: toml::Table = toml::from_str(&format!("for = {text}")).unwrap();
        Variables::parse(&value["for"])
    }

    fn instance(pairs: &[(&str, Value, usize)]) -> Instance {
        Instance(
            pairs
                .iter()
                .map(|(n, v, i)| (n.to_string(), v.clone(), *i))
                .collect(),
        )
    }

    fn floor_room(floor: i64, room: &str, room_index: usize) -> Instance {
        instance(&[
            ("floor", Value::Int(floor), 0),
            ("room", Value::Text(room.into()), room_index),
        ])
    }

    #[test]
    fn a_range_and_a_list_make_every_combination_the_last_varying_fastest() {
        let v = vars(r#"{ room = ["01", "02"], floor = "1..=3" }"#).unwrap();
        assert_eq!(v.count(), Some(6));
        let all: Vec<String> = v.instances().map(|i| i.to_string()).collect();
        assert_eq!(
            all,
            [
                "floor=1 room=01",
                "floor=1 room=02",
                "floor=2 room=01",
                "floor=2 room=02",
                "floor=3 room=01",
                "floor=3 room=02"
            ]
        );
        let basement = vars(r#"{ floor = "-2..=-1" }"#).unwrap();
        let all: Vec<String> = basement.instances().map(|i| i.to_string()).collect();
        assert_eq!(all, ["floor=-2", "floor=-1"]);
    }

    #[test]
    fn placeholders_insert_pad_and_compute() {
        let i = floor_room(7, "03", 2);
        let r = |t: &str| render(t, &i);
        assert_eq!(r("smoke-B1-{floor:02}-{room}").unwrap(), "smoke-B1-07-03");
        assert_eq!(r("{floor}{room}").unwrap(), "703");
        assert_eq!(r("{(floor - 1) * 4 + room_index + 1}").unwrap(), "27");
        assert_eq!(r("{room + 10}").unwrap(), "13", "a text holding a number");
        assert_eq!(r("{room:04}").unwrap(), "0003");
        assert_eq!(r("{{floor}}").unwrap(), "{floor}");
        assert_eq!(r("{-floor:03}").unwrap(), "-07");
        assert_eq!(r("{ floor*2-1 }").unwrap(), "13");
        assert_eq!(r("no placeholder").unwrap(), "no placeholder");
    }

    #[test]
    fn division_and_remainder_are_euclidean() {
        let at = |floor: i64| {
            render(
                "{(floor - 1) / 8}:{(floor - 1) % 8}",
                &floor_room(floor, "01", 0),
            )
            .unwrap()
        };
        assert_eq!(at(1), "0:0");
        assert_eq!(at(8), "0:7");
        assert_eq!(at(9), "1:0");
        assert_eq!(
            at(-1),
            "-1:6",
            "a basement floor groups below, never a negative remainder"
        );
    }

    #[test]
    fn chinese_text_passes_through_unchanged() {
        let i = instance(&[("building", Value::Text("1号楼".into()), 0)]);
        assert_eq!(
            render("{building}·{building_index}", &i).unwrap(),
            "1号楼·0"
        );
        let err = render("{building + 1}", &i).unwrap_err();
        assert_eq!(
            err,
            "building is \"1号楼\", not a number: only {building} alone inserts it as it is"
        );
    }

    #[test]
    fn bad_placeholders_say_what_is_wrong() {
        let i = floor_room(1, "01", 0);
        for (text, want) in [
            ("{floor", "a '{' without its '}'"),
            ("floor}", "a '}' without its '{'"),
            ("{}", "{}: is empty"),
            ("{floor:2}", "after ':' give 0 and a width"),
            ("{floor:0}", "after ':' give 0 and a width"),
            ("{floor ^ 2}", "'^' is not allowed"),
            ("{(floor + 1}", "a '(' without its ')'"),
            ("{floor +}", "ends too early"),
            ("{floor floor}", "unexpected \"floor\""),
            ("{floor / 0}", "divides by zero"),
            ("{9223372036854775807 + floor}", "overflows"),
            ("{99999999999999999999}", "too large"),
            ("{storey}", "no variable storey"),
        ] {
            let err = render(text, &i).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn bad_variables_say_what_is_wrong() {
        for (text, want) in [
            ("\"1..=3\"", "must be a table of variables"),
            ("{}", "has no variables"),
            (r#"{ floor = "1..32" }"#, "both ends included, \"1..=32\""),
            (r#"{ floor = "1-32" }"#, "is not a range"),
            (r#"{ floor = "a..=b" }"#, "ends are integers"),
            (r#"{ floor = "5..=1" }"#, "is empty"),
            (r#"{ floor = [] }"#, "the list is empty"),
            (r#"{ floor = [1.5] }"#, "not float"),
            (r#"{ floor = 3 }"#, "is a integer"),
            (
                r#"{ floor_index = "1..=2" }"#,
                "names ending in _index are taken",
            ),
            (r#"{ "1st" = "1..=2" }"#, "not starting with a digit"),
            (
                r#"{ a = "1..=2", b = "1..=2", c = "1..=2", d = "1..=2", e = "1..=2", f = "1..=2", g = "1..=2", h = "1..=2", i = "1..=2" }"#,
                "at most 8",
            ),
        ] {
            let err = vars(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn a_huge_product_is_counted_without_being_expanded() {
        let v =
            vars(r#"{ a = "1..=999999", b = "1..=999999", c = "1..=999999", d = "1..=999999" }"#)
                .unwrap();
        assert_eq!(
            v.count(),
            None,
            "overflows usize on 64 bits? it must not pretend"
        );
        let v = vars(r#"{ a = "1..=1000", b = "1..=1000" }"#).unwrap();
        assert_eq!(v.count(), Some(1_000_000));
    }

    #[test]
    fn a_template_is_checked_once_and_rendered_per_instance() {
        let table: toml::Table = toml::from_str(
            r#"
id = "smoke-{floor:02}-{room}"
unit_id = "{room_index + 1}"
poll_interval_ms = 1000
points = [{ name = "p{storey}" }, { name = "q{" }]
"#,
        )
        .unwrap();
        let problems = DeviceTemplate::new(table.clone(), ["floor", "room"], true).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "points[0].name");
        assert!(
            problems[0]
                .1
                .contains("names storey, which is not one of the variables (floor, room)"),
            "{problems:?}"
        );
        // A CSV row's cells have no positions.
        let unindexed = toml::from_str::<toml::Table>("unit_id = \"{room_index}\"").unwrap();
        assert!(DeviceTemplate::new(unindexed, ["room"], false).is_err());
        assert_eq!(problems[1].0, "points[1].name");
        let mut table = table;
        table.remove("points");
        let t = DeviceTemplate::new(table, ["floor", "room"], true).unwrap();
        let out = t.render(&floor_room(12, "03", 2)).unwrap();
        assert_eq!(out["id"].as_str(), Some("smoke-12-03"));
        assert_eq!(out["unit_id"].as_str(), Some("3"));
        assert_eq!(out["poll_interval_ms"].as_integer(), Some(1000));
        assert_eq!(t.id(), Some("smoke-{floor:02}-{room}"));
        let bad = DeviceTemplate::new(
            toml::from_str::<toml::Table>("unit_id = \"{room * 2}\"").unwrap(),
            ["room"],
            true,
        )
        .unwrap();
        let err = bad
            .render(&instance(&[("room", Value::Text("A".into()), 0)]))
            .unwrap_err();
        assert_eq!(err.0, "unit_id");
        assert!(err.1.contains("room is \"A\", not a number"), "{err:?}");
    }

    proptest::proptest! {
        /// Outside input: any template text gives a string or an error, never a panic.
        #[test]
        fn no_template_text_makes_rendering_panic(text in "[a-z0-9{}():+*/%_ -]{0,24}") {
            let _ = render(&text, &floor_room(3, "02", 1));
        }
    }
}
