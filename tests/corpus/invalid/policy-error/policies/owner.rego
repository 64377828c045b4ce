# Case policy-error: a repository policy that fails while it evaluates (the team label
# is not a number), so the plan cannot be judged and must not pass.
package rollgate.corpus.owner

import rego.v1

deny contains msg if {
	to_number(input.plan.metadata.labels.team) > 3
	msg := "team labels are numbers above 3"
}
