//! XML → JSON the way the Waher Agent API converts stanzas (seed 000; Waher.Content.Xml's
//! `XmlElementJsonEncoder`): every element is an object with `__name` (its local name) and `__ns`
//! (its namespace); attributes are properties (strings, `xml:lang` by that name); child elements
//! are properties named by their local name, an object when one child has that name and an array
//! of objects when several have; the element's text (all of its text nodes, concatenated) is
//! `value`, or `__value` when a child is named `value`.

use minidom::{Element, Node};
use serde_json::{Map, Value};

/// The XML namespace (`xml:lang`).
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// `el` as JSON.
pub fn to_json(el: &Element) -> Value {
    let mut obj = Map::new();
    obj.insert("__name".into(), Value::String(el.name().to_string()));
    obj.insert("__ns".into(), Value::String(el.ns()));
    for ((ns, name), value) in el.attrs().iter() {
        let key = if ns.as_str() == NS_XML {
            format!("xml:{}", name.as_str())
        } else {
            name.as_str().to_string()
        };
        obj.insert(key, Value::String(value.clone()));
    }
    // Children grouped by local name, in order of first occurrence.
    let mut groups: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut text: Option<String> = None;
    for node in el.nodes() {
        match node {
            Node::Element(child) => match groups.iter_mut().find(|(n, _)| *n == child.name()) {
                Some((_, v)) => v.push(to_json(child)),
                None => groups.push((child.name(), vec![to_json(child)])),
            },
            Node::Text(t) => text.get_or_insert_with(String::new).push_str(t),
        }
    }
    let has_value_child = groups.iter().any(|(n, _)| *n == "value");
    for (name, mut values) in groups {
        let v = if values.len() == 1 {
            values.pop().expect("one")
        } else {
            Value::Array(values)
        };
        obj.insert(name.to_string(), v);
    }
    if let Some(text) = text {
        let key = if has_value_child { "__value" } else { "value" };
        obj.insert(key.into(), Value::String(text));
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn presence_with_attributes_text_children_and_namespaces() {
        let p = el("<presence xmlns='jabber:client' from='bob@x/laptop' to='alice@x' xml:lang='en'>\
                <show>dnd</show><status>busy</status><priority>5</priority>\
                <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>");
        assert_eq!(
            to_json(&p),
            json!({
                "__name": "presence", "__ns": "jabber:client",
                "from": "bob@x/laptop", "to": "alice@x", "xml:lang": "en",
                "show": {"__name": "show", "__ns": "jabber:client", "value": "dnd"},
                "status": {"__name": "status", "__ns": "jabber:client", "value": "busy"},
                "priority": {"__name": "priority", "__ns": "jabber:client", "value": "5"},
                "c": {"__name": "c", "__ns": "http://jabber.org/protocol/caps",
                      "hash": "sha-1", "node": "n", "ver": "v"}
            })
        );
    }

    #[test]
    fn repeated_children_become_arrays_in_order() {
        let x = el("<x xmlns='urn:a'><item n='1'/><other/><item n='2'>t</item>\
                <item xmlns='urn:b' n='3'/></x>");
        let v = to_json(&x);
        let items = v["item"].as_array().expect("an array");
        assert_eq!(
            items.len(),
            3,
            "grouped by local name, whatever the namespace"
        );
        assert_eq!(items[0]["n"], "1");
        assert_eq!(items[1]["value"], "t");
        assert_eq!(items[2]["__ns"], "urn:b");
        assert_eq!(v["other"], json!({"__name": "other", "__ns": "urn:a"}));
        assert!(v.get("value").is_none(), "no text, no value");
    }

    #[test]
    fn mixed_text_and_a_child_named_value() {
        let x = el("<x xmlns='urn:a'>one<value>v</value>two</x>");
        let v = to_json(&x);
        assert_eq!(v["__value"], "onetwo");
        assert_eq!(v["value"]["value"], "v");
        let y = el("<y xmlns='urn:a'>a &amp; b</y>");
        assert_eq!(to_json(&y)["value"], "a & b");
    }
}
