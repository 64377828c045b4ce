# A plan labelled `environment: production` must be judged on live metrics at least
# once: some step of its (expanded) step list is an analysis with at least one check.
package rollgate.builtin.production_analysis

import rego.v1

plan_name := object.get(input, ["plan", "metadata", "name"], "<unnamed>")

deny contains msg if {
	input.plan.metadata.labels.environment == "production"
	not has_analysis
	msg := sprintf("plan %q: production plans need at least one analysis step with a check", [plan_name])
}

has_analysis if {
	some step in input.steps
	count(step.analysis.checks) > 0
}
