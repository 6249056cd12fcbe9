//! `*.pkr.json`: HCL2 in JSON syntax, turned into the same body the native syntax gives.
//!
//! As HCL's JSON syntax says, a block type's value is an object keyed by its labels (or an
//! array of them), and strings are templates (`"${var.region}"`). Which keys are blocks
//! comes from Packer's schema: the top-level and `build` blocks, and in sources the nested
//! blocks that must stay blocks (tag and filter blocks folded into maps, `dynamic`). Other
//! objects are attributes, which lower to the same JSON.
//!
//! Positions: the body is built, so problems name the file without a line.

use hcl_edit::expr::{Array, Expression, Object, ObjectKey};
use hcl_edit::structure::{Attribute, Block, Body};
use hcl_edit::template::StringTemplate;
use hcl_edit::{Ident, Number};
use serde_json::{Map, Value as J};

/// Nested blocks of sources, provisioners and post-processors that are blocks in JSON too.
const NESTED_BLOCKS: [&str; 20] = [
    "ami_block_device_mappings",
    "ami_root_device",
    "assume_role",
    "aws_polling",
    "dynamic",
    "ebs_volumes",
    "filter",
    "fleet_tag",
    "launch_block_device_mappings",
    "metadata_options",
    "root_volume_tag",
    "run_tag",
    "run_volume_tag",
    "security_group_filter",
    "snapshot_tag",
    "source_ami_filter",
    "spot_tag",
    "subnet_filter",
    "tag",
    "vpc_filter",
];

pub(crate) fn body(text: &str) -> Result<Body, String> {
    let root: J = serde_json::from_str(text).map_err(|e| {
        format!(
            "not valid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        )
    })?;
    let J::Object(root) = root else {
        return Err(
            "an HCL2 JSON template must be an object of blocks (variable, source, build …)".into(),
        );
    };
    if root.contains_key("builders") {
        return Err("this is a legacy JSON template (it has \"builders\"): name it *.json, not *.pkr.json, which is HCL2 in JSON syntax".into());
    }
    let mut out = Body::new();
    for (key, value) in &root {
        match key.as_str() {
            "variable" => labeled(&mut out, key, value, 1, &|b, v| variable_body(b, v))?,
            "local" | "data" => labeled(
                &mut out,
                key,
                value,
                if key == "data" { 2 } else { 1 },
                &|b, v| plain_body(b, v),
            )?,
            "source" => labeled(&mut out, key, value, 2, &|b, v| plain_body(b, v))?,
            "locals" | "packer" => labeled(&mut out, key, value, 0, &|b, v| plain_body(b, v))?,
            "build" => labeled(&mut out, key, value, 0, &|b, v| build_body(b, v))?,
            other => out.push(block(other, &[], Body::new())?),
        }
    }
    Ok(out)
}

type Filler<'f> = dyn Fn(&mut Body, &Map<String, J>) -> Result<(), String> + 'f;

/// Blocks of type `ident` with `n` labels: `{ "l1": { "l2": { body } } }`, or an array of those.
fn labeled(out: &mut Body, ident: &str, value: &J, n: usize, fill: &Filler) -> Result<(), String> {
    fn walk(
        out: &mut Body,
        ident: &str,
        value: &J,
        n: usize,
        labels: &mut Vec<String>,
        fill: &Filler,
    ) -> Result<(), String> {
        match value {
            J::Array(items) => {
                for item in items {
                    walk(out, ident, item, n, labels, fill)?;
                }
                Ok(())
            }
            J::Object(m) if labels.len() == n => {
                let mut b = Body::new();
                fill(&mut b, m)?;
                out.push(block(ident, labels, b)?);
                Ok(())
            }
            J::Object(m) => {
                for (label, inner) in m {
                    labels.push(label.clone());
                    walk(out, ident, inner, n, labels, fill)?;
                    labels.pop();
                }
                Ok(())
            }
            other => Err(format!(
                "`{ident}` must be an object (its labels, then its body), found {other}"
            )),
        }
    }
    walk(out, ident, value, n, &mut Vec::new(), fill)
}

fn block(ident: &str, labels: &[String], body: Body) -> Result<Block, String> {
    let id = Ident::try_new(ident).map_err(|_| format!("`{ident}` is not a valid block name"))?;
    let mut b = Block::builder(id);
    for l in labels {
        b = b.label(l.as_str());
    }
    let mut built = b.build();
    built.body = body;
    Ok(built)
}

fn attribute(body: &mut Body, key: &str, value: Expression) -> Result<(), String> {
    let id = Ident::try_new(key).map_err(|_| format!("`{key}` is not a valid attribute name"))?;
    body.push(Attribute::new(id, value));
    Ok(())
}

fn variable_body(out: &mut Body, m: &Map<String, J>) -> Result<(), String> {
    for (k, v) in m {
        match (k.as_str(), v) {
            // A type is an expression written as a string: "list(string)".
            ("type", J::String(s)) => {
                let e = hcl_edit::parser::parse_expr(s)
                    .map_err(|e| format!("variable type {s:?}: {}", e.message()))?;
                attribute(out, k, e)?;
            }
            ("validation", _) => labeled(out, k, v, 0, &|b, inner| plain_body(b, inner))?,
            _ => attribute(out, k, expr(v)?)?,
        }
    }
    Ok(())
}

/// A body whose objects under [`NESTED_BLOCKS`] keys are blocks; `dynamic` takes a label.
fn plain_body(out: &mut Body, m: &Map<String, J>) -> Result<(), String> {
    for (k, v) in m {
        match k.as_str() {
            "dynamic" => labeled(out, k, v, 1, &|b, inner| plain_body(b, inner))?,
            "content" | "validation" | "required_plugins" => {
                labeled(out, k, v, 0, &|b, inner| plain_body(b, inner))?
            }
            key if NESTED_BLOCKS.contains(&key) && is_objects(v) => {
                labeled(out, k, v, 0, &|b, inner| plain_body(b, inner))?
            }
            _ => attribute(out, k, expr(v)?)?,
        }
    }
    Ok(())
}

fn is_objects(v: &J) -> bool {
    match v {
        J::Object(_) => true,
        J::Array(items) => !items.is_empty() && items.iter().all(J::is_object),
        _ => false,
    }
}

fn build_body(out: &mut Body, m: &Map<String, J>) -> Result<(), String> {
    for (k, v) in m {
        match k.as_str() {
            "source" => labeled(out, k, v, 1, &|b, inner| plain_body(b, inner))?,
            "provisioner" | "post-processor" | "error-cleanup-provisioner" => {
                labeled(out, k, v, 1, &|b, inner| plain_body(b, inner))?
            }
            "post-processors" => labeled(out, k, v, 0, &|b, inner| {
                for (pk, pv) in inner {
                    if pk == "post-processor" {
                        labeled(b, pk, pv, 1, &|bb, i| plain_body(bb, i))?;
                    } else {
                        b.push(block(pk, &[], Body::new())?);
                    }
                }
                Ok(())
            })?,
            "hcp_packer_registry" => labeled(out, k, v, 0, &|b, inner| plain_body(b, inner))?,
            _ => attribute(out, k, expr(v)?)?,
        }
    }
    Ok(())
}

/// A JSON value as an expression: strings are templates.
fn expr(v: &J) -> Result<Expression, String> {
    Ok(match v {
        J::Null => Expression::null(),
        J::Bool(b) => Expression::from(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Expression::from(i),
            None => Expression::from(
                Number::from_f64(n.as_f64().unwrap_or(0.0)).ok_or("a number that is not finite")?,
            ),
        },
        J::String(s) if !s.contains("${") && !s.contains("%{") => Expression::from(s.as_str()),
        J::String(s) => {
            let t = hcl_edit::parser::parse_template(s)
                .map_err(|e| format!("template {s:?}: {}", e.message()))?;
            Expression::from(StringTemplate::from(t.into_iter().collect::<Vec<_>>()))
        }
        J::Array(items) => {
            let mut a = Array::new();
            for i in items {
                a.push(expr(i)?);
            }
            Expression::from(a)
        }
        J::Object(m) => {
            let mut o = Object::new();
            for (k, v) in m {
                o.insert(ObjectKey::from(Expression::from(k.as_str())), expr(v)?);
            }
            Expression::from(o)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_templates_from_json() {
        let b = body(
            r#"{
              "variable": {"region": {"type": "string", "default": "us-east-1"}, "zones": {"type": "list(string)", "default": []}},
              "source": {"amazon-ebs": {"x": {"region": "${var.region}", "tag": [{"key": "a", "value": "b"}]}}},
              "build": {"sources": ["source.amazon-ebs.x"], "provisioner": [{"shell": {"inline": ["echo"]}}]}
            }"#,
        )
        .unwrap();
        let idents: Vec<(&str, Vec<&str>)> = b
            .blocks()
            .map(|b| {
                (
                    b.ident.value().as_str(),
                    b.labels.iter().map(|l| l.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            idents,
            // serde_json orders keys: block order does not matter at the top level.
            [
                ("build", vec![]),
                ("source", vec!["amazon-ebs", "x"]),
                ("variable", vec!["region"]),
                ("variable", vec!["zones"])
            ]
        );
        let src = b.blocks().nth(1).unwrap();
        assert!(matches!(
            src.body.get_attribute("region").unwrap().value,
            Expression::StringTemplate(_)
        ));
        assert_eq!(
            src.body.blocks().next().unwrap().ident.value().as_str(),
            "tag"
        );
        let build = b.blocks().next().unwrap();
        assert_eq!(
            build.body.blocks().next().unwrap().labels[0].as_str(),
            "shell"
        );
        assert!(body("[1]").unwrap_err().contains("must be an object"));
        assert!(body(r#"{"builders": []}"#)
            .unwrap_err()
            .contains("legacy JSON template"));
    }
}
