#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "hotsnap.h"
#include "template.h"

static int valid_utf8(const unsigned char *s)
{
    while (*s) {
        int n;

        if (*s < 0x80)
            n = 0;
        else if ((*s & 0xe0) == 0xc0)
            n = 1;
        else if ((*s & 0xf0) == 0xe0)
            n = 2;
        else if ((*s & 0xf8) == 0xf0)
            n = 3;
        else
            return 0;
        s++;
        while (n-- > 0) {
            if ((*s & 0xc0) != 0x80)
                return 0;
            s++;
        }
    }
    return 1;
}

int hs__template_expand(const char *tmpl, const struct hs_template_vars *vars, char *out,
                        struct hs_err *err)
{
    char date[16], tod[16];
    struct tm tm;
    time_t t = (time_t)vars->time;
    size_t o = 0, vlen;
    const char *p = tmpl, *end, *val;

    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%Y%m%d", &tm);
    strftime(tod, sizeof(tod), "%H%M%S", &tm);
    while (*p) {
        if (p[0] == '{' && p[1] == '{') {
            val = "{";
            vlen = 1;
            p += 2;
        } else if (p[0] == '}' && p[1] == '}') {
            val = "}";
            vlen = 1;
            p += 2;
        } else if (*p == '}') {
            return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                              "name template '%s' has an unmatched '}' (write '}}' for a brace)",
                              tmpl);
        } else if (*p == '{') {
            end = strchr(p, '}');
            if (!end)
                return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                                  "name template '%s' has an unclosed '{'", tmpl);
            vlen = (size_t)(end - p - 1);
#define IS(name) (vlen == strlen(name) && !strncmp(p + 1, name, vlen))
            if (IS("domain"))
                val = vars->domain;
            else if (IS("uuid"))
                val = vars->uuid;
            else if (IS("disk"))
                val = vars->disk;
            else if (IS("date"))
                val = date;
            else if (IS("time"))
                val = tod;
            else
                return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                                  "name template '%s' has an unknown placeholder '%.*s' (known: "
                                  "{domain} {uuid} {date} {time} {disk})",
                                  tmpl, (int)(vlen + 2), p);
#undef IS
            val = val ? val : "";
            vlen = strlen(val);
            p = end + 1;
        } else {
            val = p++;
            vlen = 1;
        }
        if (o + vlen > HS_NAME_MAX)
            return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                              "name template '%s' expands to more than %d bytes", tmpl,
                              HS_NAME_MAX);
        memcpy(out + o, val, vlen);
        o += vlen;
    }
    out[o] = '\0';
    if (o == 0)
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "name template '%s' expands to nothing",
                          tmpl);
    for (p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                              "name template '%s' expands to a name with a control character",
                              tmpl);
    if (out[0] == ' ' || out[o - 1] == ' ')
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                          "name template '%s' expands to a name with leading or trailing space",
                          tmpl);
    if (!valid_utf8((const unsigned char *)out))
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "name template '%s' is not valid UTF-8",
                          tmpl);
    return 0;
}

int hs__template_has_disk(const char *tmpl)
{
    return strstr(tmpl, "{disk}") != NULL;
}

int hs_name_template_check(const char *tmpl, char *errbuf, size_t errlen)
{
    /* the longest values a real domain can give: a 64-byte name is common */
    struct hs_template_vars v = {
        .domain = "d", .uuid = "00000000-0000-0000-0000-000000000000", .disk = "vda", .time = 0};
    struct hs_err err = {0};
    char out[HS_NAME_MAX + 1];
    int rc = hs__template_expand(tmpl, &v, out, &err);

    if (rc < 0)
        hs_err_copy(&err, errbuf, errlen);
    return rc;
}
