"""The words a command line or an environment variable may use for true and false
(`restart:airship,hard=yes`, `DEPLOYTOOLS_JSON=1`, `monitor:airship,follow=off`)."""

TRUE = frozenset({"1", "true", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "no", "n", "off"})
