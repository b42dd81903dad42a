"""The cluster controller (`failovervm controller`): scheduling and VF claims, pools, admission,
migrations, node evacuation and recovery. main.py holds every Kopf registration; the domain
modules take the ControllerContext (context.py) as their first argument."""
