"""One version: the package's, in the API's OpenAPI document."""

from importlib.metadata import version

from api.main import create_app
from model.config import Settings
from model.version import VERSION


def test_the_api_reports_the_package_version(tmp_path):
    assert version("fraudstream") == VERSION
    app = create_app(Settings(home=tmp_path, auth_enabled=False))
    assert app.version == VERSION
    assert app.openapi()["info"]["version"] == VERSION
