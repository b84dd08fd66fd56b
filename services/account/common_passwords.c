/* common_passwords.c: passwords refused because they are commonly used.
 *
 * Where it comes from: the entries of 10 characters or more (shorter ones
 * are refused by length anyway) that head the public breach-frequency
 * lists -- the UK NCSC's "100k most used passwords" (from Have I Been
 * Pwned) and SecLists' 10-million-password-list-top-10000 -- written down
 * by hand, plus the obvious variants of this service's own name. It is a
 * short list on purpose: it stops the guesses an attacker tries first,
 * which is what NIST SP 800-63B asks for; it is not a breach corpus (that
 * would be a data set to ship and update, not code). Matching is
 * case-insensitive (account_password_common). Keep it sorted. */
#include "account.h"

const char *const account_common_passwords[] = {
    "0000000000", "0123456789", "0987654321", "1111111111", "1111111111a", "1122334455",
    "1123581321", "1212121212", "123123123123", "1234512345", "1234567890", "12345678900",
    "12345678901", "123456789012", "1234567890a", "1234567890q", "1234567890qwerty",
    "12345678910", "123456789a", "123456789abc", "123456789q", "12345qwert", "1234qwerasdf",
    "123654789a", "1357924680", "1q2w3e4r5t", "1q2w3e4r5t6y", "1qaz2wsx3edc", "1qazxsw23edc",
    "2222222222", "3333333333", "5555555555", "6666666666", "7777777777", "8888888888",
    "9876543210", "9999999999", "a123456789", "aaaaaaaaaa", "abc123456789", "abcd123456",
    "abcd1234567", "abcdefghij", "abcdefghijk", "admin12345", "admin123456", "administrator",
    "asdfghjkl1", "asdfghjkl123", "asdfghjkl;", "baseball123", "basketball", "blink182blink182",
    "carshare123", "carshare1234", "carsharing", "changeme123", "charlie123", "chocolate1",
    "christopher", "computer123", "dragon1234", "elizabeth1", "football12", "football123",
    "iloveyou12", "iloveyou123", "iloveyou1234", "jessica123", "jordan2323", "letmein123",
    "letmein1234", "liverpool1", "manchester", "michael123", "monkey1234", "nicole1234",
    "passw0rd123", "password!!", "password00", "password01", "password10", "password11",
    "password12", "password123", "password1234", "password12345", "password2024", "password2025",
    "password2026", "password99", "princess12", "princess123", "qazwsxedc123", "qazwsxedcrfv",
    "qwe123qwe123", "qwer123456", "qwerty1234", "qwerty12345", "qwerty123456", "qwertyqwerty",
    "qwertyuiop", "qwertyuiop123", "qwertyuiop[]", "samantha12", "shadow1234", "starwars123",
    "summer2024", "summer2025", "sunshine12", "sunshine123", "superman123", "thomas1234",
    "trustno1trustno1", "unknownpassword", "welcome123", "welcome1234", "whatever12",
    "zaq12wsxcde", "zxcvbnm123", "zxcvbnmasdfghjkl",
};

const size_t account_common_password_count =
    sizeof account_common_passwords / sizeof account_common_passwords[0];
