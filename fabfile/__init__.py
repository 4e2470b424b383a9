"""This checkout's fabfile: an example of an ops repo's fabfile composing the
deploytools tasks (`deploytools --list` in a directory without a fabfile shows
the same tasks; with your own fabfile it shows ours next to yours).

Fabric's own `fab` runs them too here, in invoke's modern syntax
(`fab deploy airship`); the classic `deploy:airship` needs `deploytools`.
"""
from deploytools.tasks import *  # noqa: F401,F403
