"""How nodes look on the wire (read-only: writes go through services)."""

from rest_framework import serializers

from nodes.models import Node


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["name", "state", "last_heartbeat", "queues", "concurrency", "running",
                  "utilization"]
