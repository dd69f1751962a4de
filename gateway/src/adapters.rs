//! The LoRA adapters this gateway serves (`[[adapters]]`), and which model name a request's
//! `model` is: a model's id, an adapter's id, or `<model>:<adapter id>`. An adapter owned by a
//! tenant exists for that tenant only: any other is told no such model exists.

use engine_api::AdapterRef;
use policies::TenantId;

use crate::config::AdapterConfig;

/// An adapter a request may name.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// What the engines load: its id and file.
    pub engine: AdapterRef,
    /// The model it adapts.
    pub model: String,
    /// The tenant that owns it (`None`: shared with every tenant that may use the model).
    pub tenant: Option<String>,
}

impl Adapter {
    /// Whether `tenant` may see and use it (its model's allow-list is checked apart).
    pub fn visible_to(&self, tenant: &TenantId) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant.as_str())
    }
}

/// Every configured adapter.
#[derive(Debug, Clone, Default)]
pub struct AdapterCatalog {
    adapters: Vec<Adapter>,
}

impl AdapterCatalog {
    /// The catalog of `[[adapters]]` (validated with the configuration).
    pub fn new(configs: &[AdapterConfig]) -> Self {
        Self {
            adapters: configs
                .iter()
                .map(|c| Adapter {
                    engine: AdapterRef {
                        id: c.id.clone(),
                        path: c.path.clone(),
                    },
                    model: c.model.clone(),
                    tenant: c.tenant.clone(),
                })
                .collect(),
        }
    }

    /// The adapter `name` names, by its id or as `<model>:<id>`, if one is configured.
    pub fn resolve(&self, name: &str) -> Option<&Adapter> {
        let (model, id) = match name.split_once(':') {
            Some((model, id)) => (Some(model), id),
            None => (None, name),
        };
        self.adapters
            .iter()
            .find(|a| a.engine.id == id && model.is_none_or(|m| m == a.model))
    }

    /// The adapters `tenant` may see.
    pub fn visible_to<'a>(&'a self, tenant: &'a TenantId) -> impl Iterator<Item = &'a Adapter> {
        self.adapters.iter().filter(move |a| a.visible_to(tenant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> AdapterCatalog {
        let config = |id: &str, model: &str, tenant: Option<&str>| AdapterConfig {
            id: id.into(),
            model: model.into(),
            path: format!("{id}.gguf").into(),
            tenant: tenant.map(str::to_string),
        };
        AdapterCatalog::new(&[
            config("radiology", "base", Some("hospital")),
            config("contracts", "base", None),
        ])
    }

    #[test]
    fn a_name_is_an_adapter_id_or_model_colon_id() {
        let c = catalog();
        assert_eq!(c.resolve("radiology").unwrap().model, "base");
        assert_eq!(c.resolve("base:radiology").unwrap().engine.id, "radiology");
        assert!(
            c.resolve("other:radiology").is_none(),
            "another model's name"
        );
        assert!(c.resolve("base").is_none() && c.resolve("base:").is_none());
    }

    #[test]
    fn a_tenants_adapter_is_its_own() {
        let c = catalog();
        let hospital: TenantId = "hospital".parse().unwrap();
        let firm: TenantId = "firm".parse().unwrap();
        assert!(c.resolve("radiology").unwrap().visible_to(&hospital));
        assert!(!c.resolve("radiology").unwrap().visible_to(&firm));
        let seen: Vec<&str> = c.visible_to(&firm).map(|a| a.engine.id.as_str()).collect();
        assert_eq!(seen, ["contracts"]);
    }
}
