"""The cluster controller: scheduling, VF claims, pools, admission (and, in #4, migrations)."""
