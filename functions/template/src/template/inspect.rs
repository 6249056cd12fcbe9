//! `amiflow inspect`: what a template declares, without variables or interpolation.

use std::fmt;

use serde::Serialize;

use super::raw;
use super::secrets::MASK;
use crate::problem::Problems;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateSummary {
    pub description: Option<String>,
    pub min_packer_version: Option<String>,
    pub builders: Vec<BuilderSummary>,
    pub variables: Vec<VariableSummary>,
    pub provisioners: Vec<StepSummary>,
    pub post_processors: Vec<StepSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuilderSummary {
    pub name: String,
    #[serde(rename = "type")]
    pub builder_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariableSummary {
    pub name: String,
    /// The default as written (`<sensitive>` for sensitive variables); `None` when required.
    pub default: Option<String>,
    pub required: bool,
    pub sensitive: bool,
}

/// A provisioner or post-processor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSummary {
    #[serde(rename = "type")]
    pub step_type: String,
    pub only: Vec<String>,
    pub except: Vec<String>,
    /// Builds with an `override` (provisioners only).
    pub overrides: Vec<String>,
}

pub fn inspect(template_text: &str) -> Result<TemplateSummary, Problems> {
    let (tpl, problems) = raw::parse_template(template_text).map_err(Problems)?;
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let variables = tpl
        .variables
        .iter()
        .map(|v| {
            let sensitive = tpl.sensitive.contains(&v.name);
            VariableSummary {
                name: v.name.clone(),
                default: v.default.as_ref().map(|d| {
                    if sensitive {
                        MASK.to_string()
                    } else {
                        d.clone()
                    }
                }),
                required: v.default.is_none(),
                sensitive,
            }
        })
        .collect();
    Ok(TemplateSummary {
        description: tpl.description.clone(),
        min_packer_version: tpl.min_packer_version.clone(),
        builders: tpl
            .builders
            .iter()
            .map(|b| BuilderSummary {
                name: b.name.clone(),
                builder_type: b.type_name.clone(),
            })
            .collect(),
        variables,
        provisioners: tpl
            .provisioners
            .iter()
            .map(|p| StepSummary {
                step_type: p.type_name.clone(),
                only: p.only.clone(),
                except: p.except.clone(),
                overrides: p.overrides.keys().cloned().collect(),
            })
            .collect(),
        post_processors: tpl
            .post_processors
            .iter()
            .map(|p| StepSummary {
                step_type: p.type_name.clone(),
                only: p.only.clone(),
                except: p.except.clone(),
                overrides: Vec::new(),
            })
            .collect(),
    })
}

impl fmt::Display for TemplateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.description {
            writeln!(f, "Description:\n\n{d}\n")?;
        }
        let required: Vec<&VariableSummary> =
            self.variables.iter().filter(|v| v.required).collect();
        let optional: Vec<&VariableSummary> =
            self.variables.iter().filter(|v| !v.required).collect();
        writeln!(f, "Required variables:\n")?;
        if required.is_empty() {
            writeln!(f, "  <none>")?;
        }
        for v in required {
            writeln!(
                f,
                "  {}{}",
                v.name,
                if v.sensitive { " (sensitive)" } else { "" }
            )?;
        }
        writeln!(f, "\nOptional variables and their defaults:\n")?;
        if optional.is_empty() {
            writeln!(f, "  <none>")?;
        }
        let width = optional.iter().map(|v| v.name.len()).max().unwrap_or(0);
        for v in optional {
            writeln!(
                f,
                "  {:width$} = {}",
                v.name,
                v.default.as_deref().unwrap_or("")
            )?;
        }
        writeln!(f, "\nBuilders:\n")?;
        for b in &self.builders {
            if b.name == b.builder_type {
                writeln!(f, "  {}", b.name)?;
            } else {
                writeln!(f, "  {:24} ({})", b.name, b.builder_type)?;
            }
        }
        for (title, steps) in [
            ("Provisioners", &self.provisioners),
            ("Post-processors", &self.post_processors),
        ] {
            writeln!(f, "\n{title}:\n")?;
            if steps.is_empty() {
                writeln!(f, "  <none>")?;
            }
            for s in steps {
                let mut notes = Vec::new();
                if !s.only.is_empty() {
                    notes.push(format!("only: {}", s.only.join(", ")));
                }
                if !s.except.is_empty() {
                    notes.push(format!("except: {}", s.except.join(", ")));
                }
                if !s.overrides.is_empty() {
                    notes.push(format!("override: {}", s.overrides.join(", ")));
                }
                if notes.is_empty() {
                    writeln!(f, "  {}", s.step_type)?;
                } else {
                    writeln!(f, "  {} ({})", s.step_type, notes.join("; "))?;
                }
            }
        }
        Ok(())
    }
}
