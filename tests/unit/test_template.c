/* Name templates and argument validation. */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "hotsnap.h"
#include "template.h"

static const struct hs_template_vars vars = {
    .domain = "web-1", .uuid = "3f2b", .disk = "vdb", .time = 1764104400 /* 2025-11-25 21:00 */};

static void expect(const char *tmpl, const char *want)
{
    char out[HS_NAME_MAX + 1];
    struct hs_err err = {0};

    CHECK(hs__template_expand(tmpl, &vars, out, &err) == 0);
    if (strcmp(out, want)) {
        fprintf(stderr, "'%s' gave '%s', want '%s'\n", tmpl, out, want);
        CHECK(0);
    }
}

static void expect_error(const char *tmpl, const char *needle)
{
    char out[HS_NAME_MAX + 1], buf[768];
    struct hs_err err = {0};

    CHECK(hs__template_expand(tmpl, &vars, out, &err) == -EINVAL);
    CHECK(strstr(err.msg, needle) != NULL);
    CHECK(hs_name_template_check(tmpl, buf, sizeof(buf)) == -EINVAL);
    CHECK(strchr(buf, '\n') == NULL);
}

static void test_expand(void)
{
    expect("{domain}-{date}-{time}", "web-1-20251125-210000");
    expect("{uuid}/{disk}", "3f2b/vdb");
    expect("snap {{{domain}}}", "snap {web-1}");
    expect("plain", "plain");
}

static void test_errors(void)
{
    char big[400];

    expect_error("{nope}", "unknown placeholder '{nope}'");
    expect_error("{domain", "unclosed");
    expect_error("a}b", "unmatched");
    expect_error("", "expands to nothing");
    expect_error(" {domain}", "leading or trailing space");
    expect_error("a\tb", "control character");
    expect_error("\xff\xfe", "UTF-8");
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_error(big, "more than 255 bytes");
}

static void test_parse_options(void)
{
    enum hs_mode m;
    enum hs_format f;

    CHECK(hs_mode_parse("cold", &m) == 0 && m == HS_MODE_COLD);
    CHECK(hs_mode_parse("offline", &m) == 0 && m == HS_MODE_OFFLINE);
    CHECK(hs_mode_parse("auto", &m) == 0 && m == HS_MODE_AUTO);
    CHECK(hs_mode_parse("hot", &m) == -EINVAL);
    CHECK(hs_format_parse("raw", &f) == 0 && f == HS_FORMAT_RAW);
    CHECK(hs_format_parse("vmdk", &f) == -EINVAL);
}

int main(void)
{
    RUN(test_expand);
    RUN(test_errors);
    RUN(test_parse_options);
    return 0;
}
