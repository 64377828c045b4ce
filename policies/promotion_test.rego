package rollgate.builtin.promotion_test

import rego.v1

import data.rollgate.builtin.promotion

promoted(artifact, statuses) := {
	"plan": {"metadata": {"name": "prod-checkout"}, "spec": {"promotedFrom": "staging-checkout", "artifact": artifact}},
	"statuses": statuses,
}

staging := {"staging-checkout": {
	"plan": "staging-checkout",
	"phase": "Progressing",
	"artifact": "img@sha256:ccc",
	"stableArtifact": "img@sha256:bbb",
	"succeeded": [{"artifact": "img@sha256:aaa", "at": "2026-11-20T10:00:00Z"}],
}}

test_artifact_that_succeeded_is_allowed if {
	count(promotion.deny) == 0 with input as promoted("img@sha256:aaa", staging)
}

test_stable_artifact_is_allowed if {
	count(promotion.deny) == 0 with input as promoted("img@sha256:bbb", staging)
}

test_artifact_still_in_progress_is_denied if {
	promotion.deny == {`plan "prod-checkout": artifact "img@sha256:ccc" has not succeeded in "staging-checkout" yet (promote only what "staging-checkout" already ran)`} with input as promoted("img@sha256:ccc", staging)
}

test_missing_source_status_is_denied if {
	promotion.deny == {`plan "prod-checkout": promoted from "staging-checkout", which has no successful rollout yet`} with input as promoted("img@sha256:aaa", {})
}

test_source_without_any_success_is_denied if {
	count(promotion.deny) == 1 with input as promoted("img@sha256:aaa", {"staging-checkout": {"phase": "Progressing", "succeeded": []}})
}

test_plan_without_promoted_from_is_allowed if {
	count(promotion.deny) == 0 with input as {"plan": {"metadata": {"name": "checkout"}, "spec": {"artifact": "img@sha256:zzz"}}, "statuses": {}}
}
