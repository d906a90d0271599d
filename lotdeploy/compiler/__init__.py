"""The compiler: resolved site → intended LOT routes per node → rendered, verified text."""

from lotdeploy.compiler.compile import NodeArtifact, compile_node, compile_site
from lotdeploy.compiler.routes import ROUTE_FILE

__all__ = ["ROUTE_FILE", "NodeArtifact", "compile_node", "compile_site"]
