//! Projections: where a package's prefix lies under an install root (format doc 4.6).

use super::spec::{NodeIdent, SpecDag, SpecNode};
use super::FormatError;

/// Spack 1.x default projection.
pub const DEFAULT_PROJECTION: &str =
    "{architecture.platform}-{architecture.target}/{name}-{version}-{hash}";

/// A validated projection template.
#[derive(Debug, Clone)]
pub struct Projection {
    template: String,
}

impl Default for Projection {
    fn default() -> Self {
        Projection {
            template: DEFAULT_PROJECTION.to_string(),
        }
    }
}

impl Projection {
    /// Parse and check a template: every `{token}` must be known, and the result relative.
    pub fn new(template: &str) -> Result<Self, FormatError> {
        let p = Projection {
            template: template.to_lowercase(),
        };
        if template.starts_with('/') || template.split('/').any(|c| c == ".." || c == ".") {
            return Err(FormatError::invalid(
                "projection",
                format!("{template:?} must be a relative path without . or .."),
            ));
        }
        // Format a dummy node to validate the tokens.
        let dummy = SpecNode::from_json(
            &serde_json::json!({"name": "n", "version": "v", "hash": "h", "namespace": "ns",
                "arch": {"platform": "p", "platform_os": "o", "target": "t"}}),
            "projection",
        )?;
        p.format(&dummy, None)?;
        Ok(p)
    }

    /// The (lower-cased) template.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Does the template name the compiler (`{compiler…}`)? When it does not, no compiler
    /// need be looked up to place a package.
    pub fn uses_compiler(&self) -> bool {
        self.template.contains("{compiler")
    }

    /// The relative path of `node` (`dag` supplies its compiler for `{compiler.*}`).
    pub fn format(&self, node: &SpecNode, dag: Option<&SpecDag>) -> Result<String, FormatError> {
        let compiler = node
            .compiler
            .clone()
            .or_else(|| dag.and_then(|d| d.compiler_of(node)));
        self.format_with(node.ident(), compiler.as_ref())
    }

    /// The relative path of `node` with `compiler` for `{compiler.*}`, made as Spack's
    /// `format_path` makes it: each component of the template is formatted on its own and
    /// its characters outside `[A-Za-z0-9_+.-]` become `_` (so a value holding `/` never
    /// makes a directory). A component that comes out empty, `.` or `..` is refused, naming
    /// the package: nothing a spec says can place a prefix outside the install root.
    pub fn format_with(
        &self,
        node: NodeIdent<'_>,
        compiler: Option<&(String, String)>,
    ) -> Result<String, FormatError> {
        let mut path = String::with_capacity(96);
        let mut out = String::with_capacity(96);
        for part in self.template.split('/') {
            out.clear();
            let mut rest = part;
            while let Some(open) = rest.find('{') {
                out.push_str(&rest[..open]);
                let close = rest[open..].find('}').ok_or_else(|| {
                    FormatError::invalid(
                        "projection",
                        format!("unclosed {{ in {:?}", self.template),
                    )
                })? + open;
                let token = &rest[open + 1..close];
                self.token(&mut out, token, &node, compiler)?;
                rest = &rest[close + 1..];
            }
            out.push_str(rest);
            let start = path.len() + usize::from(!path.is_empty());
            if !path.is_empty() {
                path.push('/');
            }
            super::sanitize_into(&out, &mut path);
            let component = &path[start..];
            if component.is_empty() || component == "." || component == ".." {
                return Err(FormatError::invalid(
                    format!("package {:?}", node.display()),
                    format!(
                        "projection {:?} gives the path component {component:?} (from {part:?}): refused",
                        self.template
                    ),
                ));
            }
        }
        Ok(path)
    }

    /// Append the value of `token` to `out`.
    fn token(
        &self,
        out: &mut String,
        token: &str,
        node: &NodeIdent<'_>,
        compiler: Option<&(String, String)>,
    ) -> Result<(), FormatError> {
        let (cname, cver) = compiler
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .unwrap_or(("none", "none"));
        let mut put = |parts: &[&str], sep: &str| {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(p);
            }
        };
        match token {
            "name" => put(&[node.name], ""),
            "version" => put(&[node.version], ""),
            "hash" => put(&[node.hash], ""),
            "namespace" => put(&[node.namespace], ""),
            "architecture" | "arch" => put(&[node.platform, node.platform_os, node.target], "-"),
            "architecture.platform" | "platform" => put(&[node.platform], ""),
            "architecture.os" | "architecture.platform_os" | "os" => put(&[node.platform_os], ""),
            "architecture.target" | "target" => put(&[node.target], ""),
            "compiler.name" => put(&[cname], ""),
            "compiler.version" => put(&[cver], ""),
            "compiler" => put(&[cname, cver], "-"),
            t => {
                if let Some(n) = t.strip_prefix("hash:") {
                    let n: usize = n.parse().map_err(|_| {
                        FormatError::invalid("projection", format!("bad token {{{t}}}"))
                    })?;
                    out.extend(node.hash.chars().take(n));
                } else {
                    return Err(FormatError::invalid(
                        "projection",
                        format!("unknown token {{{t}}}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_v2_style_projections() {
        let dag = SpecDag::parse(
            br#"{"spec":{"nodes":[{"name":"zlib","version":"git.ab=1.2","arch":{"platform":"linux","platform_os":"debian12","target":"x86_64"},"compiler":{"name":"gcc","version":"12.2.0"},"hash":"abcdefgh"}]}}"#,
            "t",
        )
        .unwrap();
        let node = dag.root_node();
        assert_eq!(
            Projection::default().format(node, Some(&dag)).unwrap(),
            "linux-x86_64/zlib-git.ab_1.2-abcdefgh"
        );
        let p = Projection::new(
            "{architecture}/{compiler.name}-{compiler.version}/{name}-{version}-{hash:3}",
        )
        .unwrap();
        assert_eq!(
            p.format(node, Some(&dag)).unwrap(),
            "linux-debian12-x86_64/gcc-12.2.0/zlib-git.ab_1.2-abc"
        );
        assert!(Projection::new("{nope}").is_err());
        assert!(Projection::new("../{name}").is_err());
    }

    /// Values that would leave the install root, or make an empty or dot component, are
    /// refused; a `/` inside a value never makes a directory.
    #[test]
    fn hostile_values_never_escape_the_root() {
        let node = |name: &str, version: &str, ns: &str| {
            SpecNode::from_json(
                &serde_json::json!({"name": name, "version": version, "namespace": ns, "hash": "abc",
                    "arch": {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}}),
                "t",
            )
            .unwrap()
        };
        let p = Projection::new("{namespace}/{name}/{version}").unwrap();
        assert_eq!(
            p.format(&node("../../etc", "1/2", "ns"), None).unwrap(),
            "ns/.._.._etc/1_2"
        );
        for (name, version, ns) in [
            ("x", "..", "ns"),
            ("x", ".", "ns"),
            ("x", "1", ""),
            ("..", "1", "n"),
        ] {
            let e = p.format(&node(name, version, ns), None).unwrap_err();
            assert!(e.to_string().contains("refused"), "{e}");
        }
        // The default projection keeps every value inside one component.
        let d = Projection::default();
        assert_eq!(
            d.format(&node("a/../../b", "1", ""), None).unwrap(),
            "linux-x86_64/a_.._.._b-1-abc"
        );
    }
}
