# The first step that sends traffic to the canary must be small, so a bad version
# meets few users before its first judgement. The limit is
# data.rollgate.limits.maxFirstStepWeight (25 in policies/data.json; a repo data file
# may override it). Blue-green plans switch all at once by design and are exempt.
package rollgate.builtin.first_step

import rego.v1

plan_name := object.get(input, ["plan", "metadata", "name"], "<unnamed>")

default max_weight := 25

max_weight := data.rollgate.limits.maxFirstStepWeight

first_weight := weights[0] if {
	weights := [w |
		some step in input.steps
		w := step.setWeight
		is_number(w)
		w > 0
	]
	count(weights) > 0
}

deny contains msg if {
	not input.plan.spec.strategy.blueGreen
	first_weight > max_weight
	msg := sprintf(
		"plan %q: the first step sends %v%% of traffic to the canary; at most %v%% is allowed (data.rollgate.limits.maxFirstStepWeight)",
		[plan_name, first_weight, max_weight],
	)
}
