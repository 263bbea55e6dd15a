//! The topics of `mqtt` devices: exact topics and MQTT filters with `+` and `#`, their
//! checks, whether two can match one topic, and the [`FilterTrie`] that finds a message's
//! device. Pure: no I/O.
//!
//! # Matching (MQTT 3.1.1 §4.7, as mosquitto does it)
//! - Levels are the parts between `/`; a level may be empty (`a//b`, `/a`).
//! - `+` is one whole level and matches any one level, the empty one too.
//! - `#` is the whole last level and matches any number of levels, none included:
//!   `a/#` matches `a`, `a/b` and `a/b/c`.
//! - A filter that starts with a wildcard does not match a topic that starts with `$`
//!   (the broker's own, such as `$SYS/...`).
//!
//! # What the config accepts ([`check`])
//! A filter as above, not empty, at most [`MAX_TOPIC_BYTES`] bytes and [`MAX_LEVELS`]
//! levels, without NUL, not starting with `$`, and not reaching Shouwang's own topics
//! (`shouwang/v1/<community>/<gateway>/<channel>`, where the gateway and the console
//! talk). Two devices' topics may not both match one topic ([`common_topic`] finds such a
//! topic; `config::topic_clashes` checks every pair): a message is always exactly one
//! device's or nobody's.
//!
//! # Invariants of [`FilterTrie`]
//! - One node per level of a stored filter; a filter is stored once, at the node of its last
//!   level (`end`) or, ending in `#`, at the node before it (`rest`).
//! - The depth is at most the most levels of a stored filter, so every walk's recursion is
//!   bounded by [`MAX_LEVELS`] + 1 for checked filters, whatever topic arrives.
//! - A walk visits a node at most once (a node is one prefix of filters, and the topic's
//!   level at each depth is fixed), so trying both a literal and a `+` child at every level
//!   costs at most the trie's size, never an exponential search.
//! - [`FilterTrie::find`] allocates nothing: it is on the path of every message whose topic
//!   is no device's exact topic.

use std::collections::HashMap;

/// MQTT's limit on a topic's length, in bytes of UTF-8.
pub const MAX_TOPIC_BYTES: usize = 65_535;
/// The most levels a device's topic may have. Real sensor topics have fewer than ten (AWS
/// IoT allows eight); the bound keeps every walk of the trie shallow.
pub const MAX_LEVELS: usize = 32;

/// Shouwang's own topics (`shouwang/v1/<community>/<gateway>/<channel>`, the wire
/// contract's): a sensor's filter may not reach them.
fn own_topics() -> String {
    format!("{}/+/+/+", shouwang_wire::TOPIC_ROOT)
}

/// Whether `topic` is a filter with `+` or `#` rather than one exact topic.
pub fn is_pattern(topic: &str) -> bool {
    topic.contains(['+', '#'])
}

/// Whether `topic` is a device's topic as the config accepts it (see the module docs), or
/// why not, for the user.
pub fn check(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "is {} bytes long; MQTT allows at most {MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    if topic.contains('\0') {
        return Err("must not hold a NUL character".into());
    }
    if topic.starts_with('$') {
        return Err(format!(
            "{topic:?} starts with '$': those topics are the broker's own"
        ));
    }
    let levels = topic.split('/').count();
    if levels > MAX_LEVELS {
        return Err(format!(
            "{topic:?} has {levels} levels; at most {MAX_LEVELS}"
        ));
    }
    for (i, level) in topic.split('/').enumerate() {
        if level.contains('#') {
            if level != "#" {
                return Err(format!(
                    "{topic:?}: `#` must be a whole level (`a/#`), not part of {level:?}"
                ));
            }
            if i + 1 != levels {
                return Err(format!(
                    "{topic:?}: `#` must be the last level (`a/b/#`); use `+` for one level in the middle"
                ));
            }
        }
        if level.contains('+') && level != "+" {
            return Err(format!(
                "{topic:?}: `+` must be a whole level (`a/+/c`), not part of {level:?}"
            ));
        }
    }
    if common_topic(topic, &own_topics()).is_some() {
        return Err(format!(
            "{topic:?} also matches Shouwang's own topics ({}): the gateway would read its own messages as the sensor's",
            own_topics()
        ));
    }
    Ok(())
}

/// A topic that both filters match, if there is one: then a message on it would be both
/// filters' devices'. A `+` that meets a `+` or `#` becomes the level `x`. Both must be
/// well-formed filters (exact topics are filters too).
pub fn common_topic(a: &str, b: &str) -> Option<String> {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    let mut topic: Vec<&str> = Vec::new();
    for i in 0..a.len().max(b.len()) {
        match (a.get(i).copied(), b.get(i).copied()) {
            // `#` matches the parent level too: `a/#` and `a` meet at `a`.
            (Some("#"), Some("#") | None) | (None, Some("#")) => break,
            // `#` matches whatever the other filter has left.
            (Some("#"), Some(_)) => return finish(topic, &b[i..], i == 0),
            (Some(_), Some("#")) => return finish(topic, &a[i..], i == 0),
            (Some(p), Some(q)) => {
                let level = match (p, q) {
                    ("+", "+") => "x",
                    ("+", level) | (level, "+") if i == 0 && level.starts_with('$') => {
                        return None;
                    }
                    ("+", level) | (level, "+") => level,
                    (p, q) if p == q => p,
                    _ => return None,
                };
                topic.push(level);
            }
            // One filter ends where the other goes on with a level that is no `#`.
            (None, Some(_)) | (Some(_), None) | (None, None) => return None,
        }
    }
    if topic.is_empty() {
        topic.push("x"); // `#` and `#`
    }
    Some(topic.join("/"))
}

/// `topic` so far followed by the levels of `rest`, which a `#` of the other filter meets.
fn finish<'a>(mut topic: Vec<&'a str>, rest: &[&'a str], first: bool) -> Option<String> {
    // A wildcard at the start matches no `$` topic.
    if first && rest[0].starts_with('$') {
        return None;
    }
    for level in rest {
        match *level {
            "#" => break,
            "+" => topic.push("x"),
            level => topic.push(level),
        }
    }
    if topic.is_empty() {
        topic.push("x");
    }
    Some(topic.join("/"))
}

/// Stored filters by level, each with its value (a device): finds the one that matches a
/// topic, and every one that can match a topic another filter matches. See the module docs
/// for its invariants.
#[derive(Debug, Clone)]
pub struct FilterTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    /// The filter whose last level is this node's.
    end: Option<T>,
    /// The filter that is this node's levels followed by `#`.
    rest: Option<T>,
    literal: HashMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            end: None,
            rest: None,
            literal: HashMap::new(),
            plus: None,
        }
    }
}

impl<T> Default for FilterTrie<T> {
    fn default() -> Self {
        FilterTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> FilterTrie<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many filters are stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Store `filter` (well-formed, see [`check`]) with its value. The same filter stored
    /// before keeps its value, and `value` is handed back.
    pub fn insert(&mut self, filter: &str, value: T) -> Result<(), T> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return Self::put(&mut node.rest, value, &mut self.len);
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.literal.entry(level.into()).or_default()
            };
        }
        Self::put(&mut node.end, value, &mut self.len)
    }

    fn put(slot: &mut Option<T>, value: T, len: &mut usize) -> Result<(), T> {
        if slot.is_some() {
            return Err(value);
        }
        *slot = Some(value);
        *len += 1;
        Ok(())
    }

    /// The value of a stored filter that matches `topic` (a topic a message came on, no
    /// wildcards). When several match (filters the config check refuses), one of them.
    pub fn find(&self, topic: &str) -> Option<&T> {
        if self.len == 0 {
            return None;
        }
        find_in(&self.root, Some(topic), topic.starts_with('$'))
    }

    /// The values of every stored filter that matches a topic `filter` also matches
    /// (`filter` is well-formed; an exact topic gives the filters that match it).
    pub fn overlapping(&self, filter: &str) -> Vec<&T> {
        let mut found = Vec::new();
        overlapping_in(&self.root, Some(filter), true, &mut found);
        found
    }
}

/// The next level of `rest` and what follows it (`None` after the last level).
fn split(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}

/// `rest`: the topic's levels below `node`, `None` when the topic ends at `node`.
/// `dollar`: at the root of a `$` topic, where wildcards match nothing.
fn find_in<'a, T>(node: &'a Node<T>, rest: Option<&str>, dollar: bool) -> Option<&'a T> {
    if !dollar && let Some(value) = &node.rest {
        return Some(value);
    }
    let Some(rest) = rest else {
        return node.end.as_ref();
    };
    let (level, tail) = split(rest);
    if let Some(child) = node.literal.get(level)
        && let Some(value) = find_in(child, tail, false)
    {
        return Some(value);
    }
    match &node.plus {
        Some(child) if !dollar => find_in(child, tail, false),
        _ => None,
    }
}

/// `query`: the query filter's levels below `node`, `None` when it ends at `node`.
fn overlapping_in<'a, T>(
    node: &'a Node<T>,
    query: Option<&str>,
    root: bool,
    found: &mut Vec<&'a T>,
) {
    let Some(query) = query else {
        found.extend(node.end.as_ref());
        found.extend(node.rest.as_ref());
        return;
    };
    let (level, tail) = split(query);
    let wildcard = level == "+" || level == "#";
    // At the root, a `$` level and a wildcard never meet (see the module docs).
    let dollar = root && level.starts_with('$');
    if !dollar {
        found.extend(node.rest.as_ref());
    }
    let children = node
        .literal
        .iter()
        .filter(|(name, _)| !(root && wildcard && name.starts_with('$')))
        .map(|(_, child)| child)
        .chain(node.plus.as_deref().filter(|_| !dollar));
    match level {
        "#" => {
            // The query matches the topic that ends here, and every one below.
            found.extend(node.end.as_ref());
            for child in children {
                everything_in(child, found);
            }
        }
        "+" => {
            for child in children {
                overlapping_in(child, tail, false, found);
            }
        }
        literal => {
            if let Some(child) = node.literal.get(literal) {
                overlapping_in(child, tail, false, found);
            }
            if let Some(child) = node.plus.as_deref().filter(|_| !dollar) {
                overlapping_in(child, tail, false, found);
            }
        }
    }
}

fn everything_in<'a, T>(node: &'a Node<T>, found: &mut Vec<&'a T>) {
    found.extend(node.end.as_ref());
    found.extend(node.rest.as_ref());
    for child in node.literal.values().chain(node.plus.as_deref()) {
        everything_in(child, found);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// The reference: MQTT's matching rules written the obvious way.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && filter.starts_with(['+', '#']) {
            return false;
        }
        let topic: Vec<&str> = topic.split('/').collect();
        let filter: Vec<&str> = filter.split('/').collect();
        for (i, level) in filter.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < topic.len() => {}
                literal if topic.get(i) == Some(&literal) => {}
                _ => return false,
            }
        }
        filter.len() == topic.len()
    }

    fn refused(topic: &str) -> String {
        check(topic).unwrap_err()
    }

    #[test]
    fn exact_topics_and_filters_with_whole_level_wildcards_are_accepted() {
        for ok in [
            "nbiot/riverside/smoke/861234567890123",
            "lift/E12/+/status",
            "nbiot/riverside/smoke/861234567890123/#",
            "+/status",
            "a//b",
            "/a",
            "lift/+/+/+",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn a_hash_that_is_not_the_whole_last_level_is_refused() {
        assert!(refused("a/#/b").contains("must be the last level"));
        assert!(refused("a/b#").contains("must be a whole level"));
        assert!(refused("a/#b").contains("must be a whole level"));
    }

    #[test]
    fn a_plus_that_is_not_a_whole_level_is_refused() {
        assert!(refused("a/b+/c").contains("`+` must be a whole level"));
        assert!(refused("a/++").contains("`+` must be a whole level"));
    }

    #[test]
    fn empty_too_long_dollar_and_nul_topics_are_refused() {
        assert_eq!(refused(""), "must not be empty");
        assert!(refused(&"a".repeat(MAX_TOPIC_BYTES + 1)).contains("65535"));
        assert!(refused(&vec!["a"; MAX_LEVELS + 1].join("/")).contains("at most 32"));
        assert_eq!(check(&vec!["a"; MAX_LEVELS].join("/")), Ok(()));
        assert!(refused("$SYS/broker/load").contains("broker's own"));
        assert!(refused("a/\0/b").contains("NUL"));
    }

    #[test]
    fn filters_that_reach_shouwangs_own_topics_are_refused() {
        for own in [
            "#",
            "+/#",
            "shouwang/#",
            "+/+/+/+/+",
            "shouwang/v1/+/gw-b1/events",
        ] {
            assert!(refused(own).contains("Shouwang's own topics"), "{own}");
        }
        // Four levels can never be a Shouwang topic.
        assert_eq!(check("+/+/+/+"), Ok(()));
    }

    #[test]
    fn a_plus_and_a_literal_level_overlap() {
        assert_eq!(common_topic("a/+", "a/b").as_deref(), Some("a/b"));
        assert_eq!(common_topic("a/+", "a/+").as_deref(), Some("a/x"));
        assert_eq!(common_topic("a/+/c", "a/b/+").as_deref(), Some("a/b/c"));
    }

    #[test]
    fn different_literal_levels_and_different_lengths_never_overlap() {
        assert_eq!(common_topic("a/+/c", "a/b/d"), None);
        assert_eq!(common_topic("a/b", "a/c"), None);
        assert_eq!(common_topic("a/+", "a/b/c"), None);
        assert_eq!(common_topic("a", "a/+"), None);
        assert_eq!(common_topic("lift/E12/+/status", "lift/E13/+/status"), None);
    }

    #[test]
    fn a_hash_overlaps_everything_under_it_and_its_parent() {
        assert_eq!(common_topic("a/#", "a/b/c").as_deref(), Some("a/b/c"));
        assert_eq!(common_topic("a/#", "a").as_deref(), Some("a"));
        assert_eq!(common_topic("a/#", "a/#").as_deref(), Some("a"));
        assert_eq!(common_topic("a/#", "+/b/+/#").as_deref(), Some("a/b/x"));
        assert_eq!(common_topic("#", "#").as_deref(), Some("x"));
        assert_eq!(common_topic("a/#", "b/#"), None);
        assert_eq!(common_topic("a/b/#", "a"), None);
    }

    #[test]
    fn wildcards_at_the_start_never_meet_a_dollar_topic() {
        assert_eq!(common_topic("+/x", "$SYS/x"), None);
        assert_eq!(common_topic("#", "$SYS/x"), None);
        assert_eq!(common_topic("$SYS/+", "$SYS/x").as_deref(), Some("$SYS/x"));
        let mut trie = FilterTrie::new();
        trie.insert("#", 0).unwrap();
        trie.insert("+/load", 1).unwrap();
        assert_eq!(trie.find("$SYS/load"), None);
        assert_eq!(trie.find("broker/load"), Some(&0));
    }

    #[test]
    fn the_trie_finds_the_one_filter_of_a_topic_and_nothing_for_a_sibling() {
        let mut trie = FilterTrie::new();
        trie.insert("lift/E12/+/status", "E12").unwrap();
        trie.insert("nbiot/riverside/smoke/861234567890123/#", "smoke")
            .unwrap();
        trie.insert("a/b/c", "abc").unwrap();
        trie.insert("a/+/d", "a+d").unwrap();
        assert_eq!(trie.len(), 4);
        assert_eq!(trie.find("lift/E12/car/status"), Some(&"E12"));
        assert_eq!(trie.find("lift/E12//status"), Some(&"E12"));
        assert_eq!(trie.find("lift/E12/car/alarm"), None);
        assert_eq!(trie.find("lift/E12/car/status/x"), None);
        assert_eq!(trie.find("lift/E13/car/status"), None);
        assert_eq!(
            trie.find("nbiot/riverside/smoke/861234567890123"),
            Some(&"smoke")
        );
        assert_eq!(
            trie.find("nbiot/riverside/smoke/861234567890123/up/1"),
            Some(&"smoke")
        );
        assert_eq!(trie.find("nbiot/riverside/smoke/861234567890124"), None);
        // The literal branch fails, the `+` branch beside it matches.
        assert_eq!(trie.find("a/b/d"), Some(&"a+d"));
        assert_eq!(trie.find("a/b/c"), Some(&"abc"));
    }

    #[test]
    fn the_same_filter_is_stored_once_and_keeps_its_first_value() {
        let mut trie = FilterTrie::new();
        assert_eq!(trie.insert("a/+", 1), Ok(()));
        assert_eq!(trie.insert("a/+", 2), Err(2));
        assert_eq!(trie.insert("a/#", 3), Ok(()));
        assert_eq!(trie.insert("a/#", 4), Err(4));
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.overlapping("a/b/c"), [&3]);
        let mut one = FilterTrie::new();
        one.insert("a/+", 1).unwrap();
        assert_eq!(one.insert("a/+", 2), Err(2));
        assert_eq!(one.find("a/b"), Some(&1));
    }

    #[test]
    fn the_trie_lists_every_filter_that_overlaps_a_query() {
        let mut trie = FilterTrie::new();
        for (i, f) in ["a/b", "a/+", "a/b/c", "a/#", "b/#", "+/c"]
            .iter()
            .enumerate()
        {
            trie.insert(f, i).unwrap();
        }
        let found = |q: &str| {
            let mut v: Vec<usize> = trie.overlapping(q).into_iter().copied().collect();
            v.sort();
            v
        };
        assert_eq!(found("a/b"), [0, 1, 3]);
        assert_eq!(found("a/+/c"), [2, 3]);
        assert_eq!(found("a/d"), [1, 3]);
        assert_eq!(found("a"), [3]);
        assert_eq!(found("+/c"), [1, 3, 4, 5]);
        assert_eq!(found("#"), [0, 1, 2, 3, 4, 5]);
        assert_eq!(found("c/d"), Vec::<usize>::new());
    }

    /// Levels drawn from a small set, so that random filters meet often; `$s` tests the
    /// `$` rule, `` an empty level.
    fn level() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("+"), Just("$s")]
    }

    /// A well-formed filter of 1 to 4 levels, perhaps ending in `#`.
    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(level(), 0..4),
            proptest::bool::ANY,
        )
            .prop_filter_map("no levels", |(levels, hash)| {
                let mut levels = levels;
                if hash {
                    levels.push("#");
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            })
    }

    /// Every topic of up to 5 levels over the levels filters use: a topic two filters of at
    /// most 4 levels both match, if there is one, is among them.
    fn universe() -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let mut last: Vec<String> = vec![String::new()];
        for depth in 1..=5 {
            let mut next = Vec::new();
            for prefix in &last {
                for level in ["a", "b", "", "$s", "c"] {
                    next.push(if depth == 1 {
                        level.to_string()
                    } else {
                        format!("{prefix}/{level}")
                    });
                }
            }
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The trie finds a filter for a topic exactly when the reference matches one, and
        /// only one that the reference matches.
        #[test]
        fn the_trie_agrees_with_the_reference_matcher(
            filters in proptest::collection::vec(filter(), 0..8),
            topic_levels in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("$s"), Just("c")], 1..6),
        ) {
            let topic = topic_levels.join("/");
            let mut trie = FilterTrie::new();
            for (i, f) in filters.iter().enumerate() {
                let _ = trie.insert(f, i);
            }
            let any = filters.iter().any(|f| reference_matches(f, &topic));
            match trie.find(&topic) {
                Some(&i) => prop_assert!(reference_matches(&filters[i], &topic), "{} {topic}", filters[i]),
                None => prop_assert!(!any, "{filters:?} {topic}"),
            }
        }

        /// Two filters overlap exactly when some topic matches both, and the topic given
        /// is one.
        #[test]
        fn common_topic_is_right_about_every_pair(a in filter(), b in filter()) {
            let universe = universe();
            let both = universe.iter().any(|t| reference_matches(&a, t) && reference_matches(&b, t));
            match common_topic(&a, &b) {
                Some(t) => {
                    prop_assert!(reference_matches(&a, &t) && reference_matches(&b, &t), "{a} {b} {t}");
                }
                None => prop_assert!(!both, "{a} {b}"),
            }
            prop_assert_eq!(common_topic(&a, &b).is_some(), common_topic(&b, &a).is_some());
        }

        /// The trie lists exactly the stored filters that overlap a query.
        #[test]
        fn the_trie_lists_exactly_the_overlapping_filters(
            filters in proptest::collection::vec(filter(), 0..8),
            query in filter(),
        ) {
            let mut trie = FilterTrie::new();
            let mut stored = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                if trie.insert(f, i).is_ok() {
                    stored.push(i);
                }
            }
            let mut found: Vec<usize> = trie.overlapping(&query).into_iter().copied().collect();
            found.sort();
            let want: Vec<usize> = stored
                .into_iter()
                .filter(|&i| common_topic(&filters[i], &query).is_some())
                .collect();
            prop_assert_eq!(found, want);
        }

        /// Outside input: no topic makes the trie panic or recurse deeper than its filters.
        #[test]
        fn no_topic_makes_the_trie_panic(topic in "[a-c+#$/]{0,200}") {
            let mut trie = FilterTrie::new();
            trie.insert("a/+/#", 0).unwrap();
            trie.insert("+/b", 1).unwrap();
            trie.insert("a/b/c", 2).unwrap();
            let _ = trie.find(&topic);
        }
    }
}
