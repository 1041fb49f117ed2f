"""The nodes' part of the REST API under /api/v1/: thin views over the selectors, the drain
service and the utilization history."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from common.query import int_param, since_param
from nodes import history, selectors, services
from nodes.api.serializers import NodeSerializer


class NodeList(APIView):
    @extend_schema(responses=NodeSerializer(many=True))
    def get(self, request):
        return Response(NodeSerializer(selectors.nodes(), many=True).data)


class ClusterMetrics(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("since", OpenApiTypes.DATETIME,
                                     description="ISO 8601 time"),
                    OpenApiParameter("window", int, description="seconds back from now"),
                    OpenApiParameter("points", int, description="at most this many (10-1000)")],
        responses=inline_serializer("ClusterSeries", {
            "source": serializers.CharField(), "t": serializers.ListField(),
            "cpu": serializers.ListField(), "mem": serializers.ListField(),
            "gpu": serializers.ListField()}))
    def get(self, request):
        """Utilization averaged over every node, downsampled on the server."""
        return Response(history.series(None, since=since_param(request.query_params),
                                       points=int_param(request.query_params, "points", 300)))


class NodeMetrics(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("since", OpenApiTypes.DATETIME,
                                     description="ISO 8601 time"),
                    OpenApiParameter("window", int, description="seconds back from now"),
                    OpenApiParameter("points", int, description="at most this many (10-1000)")],
        responses=inline_serializer("NodeSeries", {
            "source": serializers.CharField(), "t": serializers.ListField(),
            "cpu": serializers.ListField(), "mem": serializers.ListField(),
            "gpu": serializers.ListField()}))
    def get(self, request, name):
        node = selectors.nodes().filter(name=name).first()
        if node is None:
            raise NotFound("No such node.")
        return Response(history.series(node, since=since_param(request.query_params),
                                       points=int_param(request.query_params, "points", 300)))


class NodeDrain(APIView):
    """Staff only: drain a node (POST .../drain/) or put it back to work (.../undrain/)."""

    permission_classes = [IsAdminUser]
    draining = True

    @extend_schema(request=None, responses=NodeSerializer)
    def post(self, request, name):
        node = selectors.nodes().filter(name=name).first()
        if node is None:
            raise NotFound("No such node.")
        node = services.drain_node(node=node, draining=self.draining, actor=request.user,
                                   via="api")
        return Response(NodeSerializer(node).data)
