package rollgate.builtin.first_step_test

import rego.v1

import data.rollgate.builtin.first_step

canary(steps) := {
	"plan": {"metadata": {"name": "checkout"}, "spec": {"strategy": {"canary": {"steps": steps}}}},
	"steps": steps,
}

test_small_first_step_is_allowed if {
	count(first_step.deny) == 0 with input as canary([{"setWeight": 5}, {"pause": {"duration": "10m"}}, {"setWeight": 100}])
}

test_first_step_at_the_limit_is_allowed if {
	count(first_step.deny) == 0 with input as canary([{"setWeight": 25}, {"setWeight": 100}])
}

test_large_first_step_is_denied if {
	first_step.deny == {`plan "checkout": the first step sends 50% of traffic to the canary; at most 25% is allowed (data.rollgate.limits.maxFirstStepWeight)`} with input as canary([{"setWeight": 50}, {"setWeight": 100}])
}

test_zero_weight_steps_are_skipped if {
	count(first_step.deny) == 1 with input as canary([{"setWeight": 0}, {"pause": {}}, {"setWeight": 100}])
}

test_limit_comes_from_data if {
	count(first_step.deny) == 0 with input as canary([{"setWeight": 50}, {"setWeight": 100}])
		with data.rollgate.limits.maxFirstStepWeight as 50
}

test_blue_green_is_exempt if {
	count(first_step.deny) == 0 with input as {
		"plan": {"metadata": {"name": "checkout"}, "spec": {"strategy": {"blueGreen": {}}}},
		"steps": [{"setWeight": 100}],
	}
}
