//! The fake nodes kwok plays the kubelet for: how they are made and when they are ready.

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;

/// The taint of the shared plane's nodes (see [`PlaneOptions::taint`]).
pub const KWOK_TAINT: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// A fake node kwok manages, with these extra labels and `NoSchedule` taints (key, value).
pub fn kwok_node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Result<Node> {
    let mut all = serde_json::json!({"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name, "type": "kwok"});
    for (k, v) in labels {
        all[*k] = serde_json::json!(v);
    }
    let taints: Vec<_> = taints
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v, "effect": "NoSchedule"}))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": all
        },
        "spec": {"taints": taints},
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000", "nvidia.com/gpu": "8"},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000", "nvidia.com/gpu": "8"},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake",
                "kubeProxyVersion": "fake", "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                "machineID": "", "osImage": "", "systemUUID": ""},
            "phase": "Running"
        }
    }))?)
}

pub fn node_ready(n: &Node) -> bool {
    let ready = n
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let tainted = n
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .any(|t| t.key.starts_with("node.kubernetes.io/"));
    ready && !tainted
}
