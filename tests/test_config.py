"""The config file: defaults, validation, and errors naming the file, key and line."""

import os

from twisted.trial import unittest

from gateway.config import ConfigError, load, loads, parse_hours


class DefaultsTests(unittest.TestCase):
    def test_empty_file_works_on_one_machine(self):
        config = loads("", "/etc/gw/gateway.toml")
        self.assertEqual(config.gateway.node, "node1")
        self.assertEqual(config.data_dir, "/etc/gw/var")
        self.assertEqual(config.database_url, "sqlite:////etc/gw/var/gateway.sqlite")
        self.assertFalse(config.archive.fail_closed)
        self.assertEqual(config.policy.default, "allow")
        self.assertEqual(config.admin.listen, "tcp:8080:interface=127.0.0.1")

    def test_example_config_is_valid(self):
        config = load(os.path.join(os.path.dirname(__file__), "..", "examples", "gateway.toml"))
        self.assertTrue(config.directory.demo_users)
        self.assertIn("line", config.connectors)
        self.assertEqual(config.policy.rules[0].name, "no-files-from-outside")


class ErrorTests(unittest.TestCase):
    def assertError(self, text, *fragments):
        with self.assertRaises(ConfigError) as caught:
            loads(text, "gw.toml")
        message = str(caught.exception)
        self.assertTrue(message.startswith("gw.toml"), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return caught.exception

    def test_unknown_key_names_file_key_line_and_the_known_keys(self):
        error = self.assertError("[archive]\n\nfail_closd = true\n", "line 3", "archive.fail_closd", "fail_closed")
        self.assertEqual(error.line, 3)

    def test_wrong_type(self):
        self.assertError("[archive]\nbatch_size = 'many'\n", "archive.batch_size", "whole number", "line 2")

    def test_bool_is_not_a_number(self):
        self.assertError("[archive]\nbatch_size = true\n", "whole number")

    def test_range(self):
        self.assertError("[archive]\nbatch_size = 0\n", "greater than 0")

    def test_choice(self):
        self.assertError("[policy]\ndefault = 'maybe'\n", "'allow', 'deny'")

    def test_unknown_section(self):
        self.assertError("[archiv]\n", "unknown section [archiv]", "line 1")

    def test_not_toml(self):
        self.assertError("[archive\n", "not valid TOML")

    def test_bad_matcher(self):
        self.assertError("[[policy.rule]]\naction='deny'\nfrom=['alice']\n", "needs a prefix", "line 3")

    def test_bad_action(self):
        self.assertError("[[policy.rule]]\naction='block'\n", "'allow' or 'deny'")

    def test_bad_kind_direction_days_hours(self):
        self.assertError("[[policy.rule]]\naction='deny'\nkinds=['fax']\n", "kinds")
        self.assertError("[[policy.rule]]\naction='deny'\ndirection='up'\n", "direction")
        self.assertError("[[policy.rule]]\naction='deny'\ndays=['funday']\n", "days")
        self.assertError("[[policy.rule]]\naction='deny'\nhours='9-5'\n", "hours")

    def test_duplicate_rule_names(self):
        self.assertError("[[policy.rule]]\nname='a'\naction='deny'\n[[policy.rule]]\nname='a'\naction='allow'\n", "two rules")

    def test_unknown_time_zone(self):
        self.assertError("[policy]\ntimezone = 'Mars/Olympus'\n", "policy.timezone", "time zone")

    def test_missing_file(self):
        with self.assertRaises(ConfigError) as caught:
            load("/nonexistent/gw.toml")
        self.assertIn("cannot read", str(caught.exception))


class HoursTests(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_hours("09:00-17:30"), (540, 1050))
        self.assertEqual(parse_hours("22:00-06:00"), (1320, 360))
        self.assertIsNone(parse_hours("25:00-26:00"))
        self.assertIsNone(parse_hours(9))
