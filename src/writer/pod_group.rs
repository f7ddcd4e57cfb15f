//! The writes of gang scheduling and what the user is told of them: a job's PodGroup created
//! (a 404 for the resource, not the namespace, means the cluster does not serve the API: a
//! refusal the user sees) and deleted with the uid seen as a precondition, the events of both;
//! and the check at start that the API is served.

use kube::api::Api;
use kube::{Client, ResourceExt};

use super::{Created, Writer, is_status, with_uid};
use crate::api::PodGroup;
use crate::api::pod_group::{API_VERSION, PLURAL};
use crate::error::Error;
use crate::plan::{ObjectKey, PlannedEvent};

/// What to tell the user when the cluster does not serve the PodGroup API.
pub const NOT_SERVED: &str = "the cluster does not serve scheduling.k8s.io/v1alpha2 PodGroups: native gang \
scheduling needs Kubernetes 1.36 with the feature gates GenericWorkload and GangScheduling on kube-apiserver, \
kube-controller-manager and kube-scheduler, and --runtime-config=scheduling.k8s.io/v1alpha2=true on \
kube-apiserver";

/// Whether the failed request was answered by an API server that does not serve the
/// resource (as opposed to a missing namespace or object).
fn not_served(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404
        && s.details.as_ref().is_none_or(|d| d.kind != "namespaces" && d.name.is_empty()))
}

impl Writer {
    /// Creates the job's PodGroup (job uid `owner`): as [`Writer::create`], and a cluster that
    /// does not serve the API refuses it with [`NOT_SERVED`].
    pub async fn create_pod_group(&self, owner: &str, group: &PodGroup) -> Result<Created<PodGroup>, Error> {
        match self.create(owner, group).await? {
            Created::Transient(source) if not_served(&source) => Ok(Created::Refused(NOT_SERVED.to_string())),
            other => Ok(other),
        }
    }

    /// Deletes the job's PodGroup, only if it still has the uid the plan saw; returns whether
    /// this call deleted it (gone already is success too). kube-controller-manager keeps it,
    /// terminating, until its running pods go.
    pub async fn delete_pod_group(&self, namespace: &str, group: &ObjectKey) -> Result<bool, Error> {
        self.gate.check()?;
        let api: Api<PodGroup> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(&group.name, &with_uid(&group.uid)).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(false),
            Err(source) => Err(Error::DeletePodGroup { name: group.name.clone(), source }),
        }
    }
}

/// The event of a PodGroup create: `SuccessfulCreatePodGroup` for a new one; for a refusal
/// (the API server's, the API not served, or a PodGroup of the same name that is not the job's)
/// the Warning `FailedCreatePodGroup`, whose note is the refusal the create step reports (no
/// pod is created without the job's gang); none otherwise.
pub fn create_event(created: &Created<PodGroup>, group: &PodGroup) -> Option<PlannedEvent> {
    let name = group.name_any();
    let refused = |msg: String| Some(PlannedEvent::warning("FailedCreatePodGroup", msg));
    match created {
        Created::New(_) => {
            let min = group.min_count().unwrap_or_default();
            let note = format!("Created PodGroup: {name} (gang of {min} pods)");
            Some(PlannedEvent::normal("SuccessfulCreatePodGroup", note))
        }
        Created::Existing(_) | Created::Terminating | Created::NamespaceGone | Created::Transient(_) => None,
        Created::Foreign => refused(format!(
            "PodGroup {name} already exists and is not controlled by this TFJob; it is left alone and no pod \
             is created without the job's own gang"
        )),
        Created::Refused(message) => refused(format!(
            "Error creating PodGroup {name}: {message}; no pod is created without the job's gang"
        )),
    }
}

/// The event of a PodGroup delete: `SuccessfulDeletePodGroup` when this call deleted it.
pub fn delete_event(deleted: bool, group: &ObjectKey) -> Option<PlannedEvent> {
    deleted.then(|| {
        PlannedEvent::normal("SuccessfulDeletePodGroup", format!("Deleted PodGroup: {}", group.name))
    })
}

/// Checks at start that the cluster serves `scheduling.k8s.io/v1alpha2` PodGroups; the error
/// says how to enable them.
pub async fn check_pod_groups_served(client: &Client) -> Result<(), Error> {
    let served = match client.list_api_group_resources(API_VERSION).await {
        Ok(list) => list.resources.iter().any(|r| r.name == PLURAL),
        Err(e) if is_status(&e, 404) => false,
        Err(source) => return Err(Error::Discovery { api: API_VERSION, source }),
    };
    if served { Ok(()) } else { Err(Error::GangApiMissing(NOT_SERVED)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use kube::core::Status;
    use serde_json::json;
    use tower_test::mock;

    fn status(code: u16, details: Option<serde_json::Value>) -> kube::Error {
        let mut s = Status::failure("not found", "NotFound").with_code(code);
        s.details = details.map(|d| serde_json::from_value(d).expect("details"));
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn only_a_404_for_the_resource_means_the_api_is_not_served() {
        assert!(not_served(&status(404, None)));
        assert!(not_served(&status(404, Some(json!({})))));
        assert!(!not_served(&status(404, Some(json!({"kind": "namespaces", "name": "ns"})))));
        assert!(!not_served(&status(404, Some(json!({"kind": "podgroups", "name": "j"})))));
        assert!(!not_served(&status(500, None)));
    }

    #[test]
    fn each_create_result_gets_its_event_and_a_refusal_says_no_pod_is_created() {
        use crate::api::pod_group::{GangPolicy, SchedulingPolicy};
        use crate::plan::EventType::{Normal, Warning};
        let mut group = PodGroup::default();
        group.metadata.name = Some("j".into());
        group.spec.scheduling_policy =
            SchedulingPolicy { gang: Some(GangPolicy { min_count: 3 }), basic: None };
        let shown = |c: Created<PodGroup>| create_event(&c, &group).map(|e| (e.type_, e.reason, e.note));
        let cases = [
            (
                Created::New(group.clone()),
                Some((Normal, "SuccessfulCreatePodGroup", "Created PodGroup: j (gang of 3 pods)")),
            ),
            (Created::Existing(group.clone()), None),
            (Created::Terminating, None),
            (Created::NamespaceGone, None),
            (
                Created::Foreign,
                Some((
                    Warning,
                    "FailedCreatePodGroup",
                    "PodGroup j already exists and is not controlled by this TFJob; \
                    it is left alone and no pod is created without the job's own gang",
                )),
            ),
            (
                Created::Refused("Invalid (test)".into()),
                Some((
                    Warning,
                    "FailedCreatePodGroup",
                    "Error creating PodGroup j: Invalid (test); no pod is created \
                    without the job's gang",
                )),
            ),
        ];
        for (created, want) in cases {
            let name = format!("{created:?}");
            let want = want.map(|(t, r, n)| (t, r.to_string(), n.to_string()));
            assert_eq!(shown(created), want, "{name}");
        }
        let key = ObjectKey { name: "j".into(), uid: "uid-pg".into() };
        let deleted = delete_event(true, &key).map(|e| (e.type_, e.reason, e.note));
        assert_eq!(deleted, Some((Normal, "SuccessfulDeletePodGroup".into(), "Deleted PodGroup: j".into())));
        assert_eq!(delete_event(false, &key), None, "gone already: not announced");
    }

    /// The start check against a mock API server answering discovery with `code` and `body`.
    async fn check(code: u16, body: serde_json::Value) -> Result<(), Error> {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let serve = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.uri().path(), "/apis/scheduling.k8s.io/v1alpha2");
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).expect("json")))
                .expect("response");
            send.send_response(response);
        });
        let r = check_pod_groups_served(&client).await;
        serve.await.expect("served");
        r
    }

    #[tokio::test]
    async fn the_start_check_says_how_to_enable_the_api() {
        let served = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "scheduling.k8s.io/v1alpha2",
            "resources": [{"name": "podgroups", "singularName": "podgroup", "namespaced": true, "kind": "PodGroup",
                           "verbs": ["create", "delete", "get", "list", "watch"]}]});
        check(200, served).await.expect("served");
        let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
            "reason": "NotFound", "message": "the server could not find the requested resource"});
        let err = check(404, missing).await.expect_err("not served").to_string();
        assert!(err.contains("GenericWorkload and GangScheduling"), "{err}");
        assert!(err.contains("--runtime-config=scheduling.k8s.io/v1alpha2=true"), "{err}");
        let only_workloads = json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "scheduling.k8s.io/v1alpha2", "resources": []});
        assert!(matches!(check(200, only_workloads).await, Err(Error::GangApiMissing(_))));
    }
}
